//! The enums whose words serde's `rename_all = "snake_case"` (or an inherent `as_str`, or a
//! string literal) gave before the `Label` trait did keep those words: JSON, tables and
//! metrics read the same.

use apns_agent::{
    datapath::{
        counters::RedirectPath,
        features::TcAttachment,
        status::{Handoff, LinkState},
    },
    preflight::Level,
    telemetry::{
        class::{TcpEvent, Verdict},
        clients::{Handshake, HandshakeFailure, Port443, ResetBy, State},
    },
};
use apns_common::{counters::DropReason, label::Label};

/// `RefusedByApple` → `refused_by_apple`: serde's snake_case of a variant name.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn words<T: Label + std::fmt::Debug>() -> Vec<(String, &'static str)> {
    T::ALL
        .iter()
        .map(|value| (snake_case(&format!("{value:?}")), value.as_str()))
        .collect()
}

fn assert_snake_case<T: Label + std::fmt::Debug>() {
    for (expected, word) in words::<T>() {
        assert_eq!(word, expected, "{}", T::WHAT);
    }
}

#[test]
fn labels_that_replaced_serde_keep_its_words() {
    assert_snake_case::<Handshake>();
    assert_snake_case::<State>();
    assert_snake_case::<HandshakeFailure>();
    assert_snake_case::<ResetBy>();
    assert_snake_case::<LinkState>();
    assert_snake_case::<Level>();
    assert_snake_case::<DropReason>();
    assert_snake_case::<TcpEvent>();
    // Written as literals before they had a Label: the same words.
    assert_snake_case::<Port443>();
    assert_snake_case::<Handoff>();
    assert_snake_case::<TcAttachment>();
    assert_snake_case::<RedirectPath>();
    assert_eq!(
        Verdict::ALL
            .iter()
            .map(|verdict| verdict.as_str())
            .collect::<Vec<_>>(),
        ["pass", "drop", "fastpath", "fastpath_tc"]
    );
}
