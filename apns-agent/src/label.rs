//! Parsing the kernel contract's labels ([`apns_common::label::Label`]) from operator input:
//! one function, and the two adapters that put it behind the command line (clap) and the
//! config file (serde). Messages read "unknown policy mode "block": expected monitor or
//! enforce" wherever the word came from.

use std::marker::PhantomData;

use apns_common::label::Label;
use clap::builder::{PossibleValuesParser, TypedValueParser};

/// The value of `T` labelled `text`, or a message naming what was expected.
pub fn parse<T: Label>(text: &str) -> Result<T, String> {
    T::from_label(text)
        .ok_or_else(|| format!("unknown {} {text:?}: expected {}", T::WHAT, T::expected()))
}

/// A clap value parser for `T`: help and completions list `T`'s labels.
pub fn value_parser<T: Label + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|value| value.as_str()))
        .map(|text| T::from_label(&text).expect("clap only passes one of the possible values"))
}

/// A config-file value of `T`, deserialized from its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labeled<T>(pub T);

impl<'de, T: Label> serde::Deserialize<'de> for Labeled<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(PhantomData<T>);
        impl<T: Label> serde::de::Visitor<'_> for Visitor<T> {
            type Value = Labeled<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a {} ({})", T::WHAT, T::expected())
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Labeled<T>, E> {
                parse(text).map(Labeled).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor(PhantomData))
    }
}

impl<T: Label> serde::Serialize for Labeled<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

/// `#[serde(serialize_with = "…")]` for a label.
pub fn serialize_label<T: Label, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_str())
}

/// `#[serde(serialize_with = "…")]` for an optional label.
pub fn serialize_option<T: Label, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(value.as_str()),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use apns_common::{fastpath::FastPath, policy::Mode};

    use super::*;

    #[test]
    fn labels_round_trip_and_errors_say_what_was_expected() {
        for mode in Mode::ALL {
            assert_eq!(parse::<Mode>(mode.as_str()), Ok(*mode));
        }
        assert_eq!(
            parse::<FastPath>("fast").unwrap_err(),
            "unknown fast path \"fast\": expected pass, mark or redirect"
        );
        let parsed: Labeled<Mode> = serde_json::from_str("\"enforce\"").unwrap();
        assert_eq!(parsed.0, Mode::Enforce);
        let err = serde_json::from_str::<Labeled<Mode>>("\"block\"").unwrap_err();
        assert!(
            err.to_string().contains("expected monitor or enforce"),
            "{err}"
        );
    }
}
