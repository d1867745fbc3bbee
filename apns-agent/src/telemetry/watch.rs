//! `stats --watch` and `clients --watch`: redraw in place until q, Esc or Ctrl-C.
//!
//! The loop only knows how to get a fresh [`Model`] (or, for `clients`, fresh text) through a
//! closure, so it has no kernel
//! dependency. The terminal is in raw mode while it runs (keys arrive without Enter, and
//! Ctrl-C arrives as a key instead of killing the process with the terminal left raw); a
//! guard restores it on every way out, errors and panics included.

use std::{
    io::{self, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, queue,
    terminal::{self, ClearType},
};

use crate::telemetry::{model::Model, stats::render_rates};

/// Raw mode and a hidden cursor for as long as it lives.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> anyhow::Result<RawTerminal> {
        terminal::enable_raw_mode().context("--watch needs a terminal (use --json in scripts)")?;
        // From here on, dropping the guard undoes whatever succeeded.
        let guard = RawTerminal;
        execute!(io::stdout(), cursor::Hide).context("hiding the cursor")?;
        Ok(guard)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // Best effort: nothing useful is left to do with an error while restoring.
        let _ = execute!(io::stdout(), cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

/// Shows the rates between successive models every `interval` until the user quits.
/// `sample` is called once at the start and once per interval; its error ends the loop (the
/// terminal restored) and is returned.
pub fn watch(
    interval: Duration,
    mut sample: impl FnMut() -> anyhow::Result<Model>,
) -> anyhow::Result<()> {
    let mut before = sample()?;
    let mut taken = Instant::now();
    let first = format!(
        "waiting {:.1} s for the first rates\n",
        interval.as_secs_f64()
    );
    redraw(interval, first, || {
        let after = sample()?;
        let now = Instant::now();
        let shown = render_rates(&before, &after, now - taken);
        before = after;
        taken = now;
        Ok(shown)
    })
}

/// Shows `first`, then what `next` renders every `interval`, in place, until the user quits
/// (`clients --watch` and the rates above). An error of `next` ends the loop (the terminal
/// restored) and is returned.
pub fn redraw(
    interval: Duration,
    first: String,
    mut next: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let _terminal = RawTerminal::enter()?;
    let mut shown = first;
    let mut taken = Instant::now();
    draw(&shown)?;
    loop {
        let deadline = taken + interval;
        // Keys until the next sample is due.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left).context("waiting for keys")? {
                continue;
            }
            match event::read().context("reading a key")? {
                event if is_quit(&event) => return Ok(()),
                // A resized terminal reflows the old frame; draw it again.
                Event::Resize(..) => draw(&shown)?,
                _ => {}
            }
        }
        taken = Instant::now();
        shown = next()?;
        draw(&shown)?;
    }
}

/// q, Q, Esc and Ctrl-C end the watch (key presses only: terminals that report releases
/// would otherwise act twice).
fn is_quit(event: &Event) -> bool {
    let Event::Key(KeyEvent {
        code,
        modifiers,
        kind,
        ..
    }) = event
    else {
        return false;
    };
    *kind != KeyEventKind::Release
        && match code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Replaces the screen with `text` and a footer. Raw mode does not turn `\n` into a
/// carriage return, so lines end in `\r\n` here.
fn draw(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    queue!(out, cursor::MoveTo(0, 0), terminal::Clear(ClearType::All))
        .context("redrawing the terminal")?;
    out.write_all(frame(text).as_bytes())
        .and_then(|()| out.flush())
        .context("redrawing the terminal")
}

fn frame(text: &str) -> String {
    let mut frame = text.replace('\n', "\r\n");
    frame.push_str("\r\nq, Esc or Ctrl-C to quit\r\n");
    frame
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyEventState;

    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers, kind: KeyEventKind) -> Event {
        Event::Key(KeyEvent {
            code,
            modifiers,
            kind,
            state: KeyEventState::NONE,
        })
    }

    #[test]
    fn quit_keys() {
        let press = |code, modifiers| key(code, modifiers, KeyEventKind::Press);
        assert!(is_quit(&press(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(is_quit(&press(KeyCode::Char('Q'), KeyModifiers::SHIFT)));
        assert!(is_quit(&press(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(is_quit(&press(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!is_quit(&press(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!is_quit(&press(KeyCode::Enter, KeyModifiers::NONE)));
        assert!(!is_quit(&key(
            KeyCode::Char('q'),
            KeyModifiers::NONE,
            KeyEventKind::Release
        )));
        assert!(!is_quit(&Event::Resize(80, 24)));
    }

    #[test]
    fn frames_use_carriage_returns() {
        assert_eq!(
            frame("a\nb\n"),
            "a\r\nb\r\n\r\nq, Esc or Ctrl-C to quit\r\n"
        );
    }
}
