//! Progress bars for long commands (`eval`, `bench`): drawn on stderr when it is a terminal,
//! hidden otherwise so that logs and CI output stay clean, and cleared however the command ends.

use std::io::IsTerminal;
use std::ops::Deref;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar that clears itself when dropped (on success and on error alike).
#[derive(Debug)]
pub struct Progress(ProgressBar);

impl Deref for Progress {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.0
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A bar of `len` steps drawn with the indicatif `template`.
pub fn bar(len: u64, template: &str) -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    Progress(bar)
}
