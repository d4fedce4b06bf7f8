//! The image builder reports through the same display.

use super::StepProgress;

impl rmachine_image::Progress for StepProgress {
    fn step(&self, index: usize, total: usize, what: &str) {
        StepProgress::step(self, index, total, what)
    }

    fn detail(&self, what: &str) {
        StepProgress::detail(self, what)
    }

    fn finish(&self, what: &str) {
        let line = format!(
            "      done: {what} ({:.1} s)",
            self.step_started.get().elapsed().as_secs_f64()
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}
