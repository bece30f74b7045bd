//! A progress bar for local training when the daemon runs in a terminal.
//! It shows steps and epochs only: never a loss, a label or anything else
//! computed from a record.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_tabular::{Progress, ProgressFn};

/// A callback for `TabularTask::set_progress` drawing one bar per round on
/// stderr, or `None` when stderr is not a terminal (a service's log stays
/// free of bar redraws).
pub(crate) fn terminal_training_bar() -> Option<ProgressFn> {
    std::io::stderr()
        .is_terminal()
        .then(|| training_bar(ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())))
}

fn training_bar(bar: ProgressBar) -> ProgressFn {
    bar.set_style(
        ProgressStyle::with_template("local training {bar:30} epoch {msg} step {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    Box::new(move |p: Progress| {
        let total = u64::from(p.epochs) * p.steps_per_epoch;
        let done = u64::from(p.epoch) * p.steps_per_epoch + p.step;
        if bar.length() != Some(total) || done < bar.position() {
            // A new round (or a new shape): start the bar over.
            bar.reset();
            bar.set_length(total);
        }
        bar.set_message(format!("{}/{}", p.epoch + 1, p.epochs));
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_epochs_and_restarts_each_round() {
        let bar = ProgressBar::hidden();
        let mut f = training_bar(bar.clone());
        f(Progress { epoch: 0, epochs: 3, step: 1, steps_per_epoch: 4 });
        assert_eq!((bar.position(), bar.length()), (1, Some(12)));
        f(Progress { epoch: 1, epochs: 3, step: 2, steps_per_epoch: 4 });
        assert_eq!(bar.position(), 6);
        assert_eq!(bar.message(), "2/3");
        f(Progress { epoch: 2, epochs: 3, step: 4, steps_per_epoch: 4 });
        assert!(bar.is_finished());
        // The next round starts over, with its own shape.
        f(Progress { epoch: 0, epochs: 2, step: 1, steps_per_epoch: 5 });
        assert_eq!((bar.position(), bar.length()), (1, Some(10)));
        assert!(!bar.is_finished());
    }
}
