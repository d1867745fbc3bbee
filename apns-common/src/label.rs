//! The words user space shows for the codes of the kernel contract, and the way back.
//!
//! Every enum whose code the datapath stores or reads (policy mode, fast path, port role,
//! outcome, direction, connection end, fast-path fallback reason), and the drop reason an
//! outcome implies, implements [`Label`]: one list of values, one label per value. The
//! agent's command line, config file, JSON and metrics all print and parse through it, so a
//! label cannot mean one thing in the config and another in `/metrics`.

/// A value with a fixed label word; see the module documentation.
pub trait Label: Copy + Sized + 'static {
    /// What a value of this type is called in messages ("policy mode").
    const WHAT: &'static str;
    /// Every value, in the order help texts list them.
    const ALL: &'static [Self];

    /// The label word: lowercase ASCII, stable (dashboards and config files hold it).
    fn as_str(self) -> &'static str;

    /// The value whose label is `text`, exactly.
    fn from_label(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|value| value.as_str() == text)
    }

    /// "a, b or c": the labels, for messages that say what was expected.
    fn expected() -> Expected<Self> {
        Expected(core::marker::PhantomData)
    }
}

/// Displays the labels of `T` as "a, b or c".
pub struct Expected<T>(core::marker::PhantomData<T>);

impl<T: Label> core::fmt::Display for Expected<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let count = T::ALL.len();
        for (index, value) in T::ALL.iter().enumerate() {
            match index {
                0 => {}
                _ if index + 1 == count => f.write_str(" or ")?,
                _ => f.write_str(", ")?,
            }
            f.write_str(value.as_str())?;
        }
        Ok(())
    }
}
