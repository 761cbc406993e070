//! Time estimates of a training run from its measured step times: the ETA in the progress bar,
//! and the warning, given once a few steps are timed, when a run will take long for the device
//! it runs on (the `paper` preset on a 2-core CPU: minutes per step, days per fold).
use tch::Device;

/// Steps timed (after those that pay for set-up) before the long-run estimate is made.
pub const TIMED_STEPS: usize = 3;

/// Training steps left in a run of `epochs` epochs of `iters` steps, at (0-based) `epoch` with
/// `step` steps of it done.
pub fn steps_left(epochs: usize, iters: usize, epoch: usize, step: usize) -> u64 {
    let this_epoch = iters.saturating_sub(step) as u64;
    let later = epochs.saturating_sub(epoch + 1) as u64 * iters as u64;
    if epoch >= epochs { 0 } else { this_epoch + later }
}

/// Seconds for `steps` more steps at the mean step time of `timed` steps that took `seconds`;
/// None before any step is timed.
pub fn estimate(steps: u64, timed: usize, seconds: f64) -> Option<f64> {
    (timed > 0 && seconds.is_finite() && seconds >= 0.0).then(|| steps as f64 * seconds / timed as f64)
}

/// A duration as people say it: `45 s`, `12 min`, `3 h 20 min`, `2.4 days`.
pub fn human(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "n/a".into();
    }
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", (secs / 60.0).round() as u64)
    } else if s < 48 * 3600 {
        let m = (secs / 60.0).round() as u64;
        format!("{} h {} min", m / 60, m % 60)
    } else {
        format!("{:.1} days", secs / 86400.0)
    }
}

/// How long a run may take before it is worth a warning: an hour on the CPU (where the presets
/// are meant for a GPU), a day on CUDA.
pub fn long_run_threshold(device: Device) -> f64 {
    if device.is_cuda() { 86400.0 } else { 3600.0 }
}

/// The warning for a run estimated at `total` seconds (`steps` steps at `per_step` seconds
/// each) on `device`, or None when that is not long for the device. `label` names the run
/// ("fold 0 of 5").
pub fn long_run_warning(label: &str, device: Device, steps: u64, per_step: f64, total: f64) -> Option<String> {
    if total <= long_run_threshold(device) {
        return None;
    }
    let advice = if device.is_cuda() {
        "fewer epochs (--epochs N) or fewer folds (--folds N)"
    } else {
        "`--preset tiny` (a quick check), a GPU (--device cuda) or fewer epochs (--epochs N)"
    };
    Some(format!(
        "warning: {label}: at {per_step:.2} s per step (measured over {TIMED_STEPS} steps on {}), the {steps} training steps \
         left will take about {} (validation not counted; cross-validation and `reproduce` train one such model per fold). \
         To finish sooner: {advice}. Ctrl-C stops with a checkpoint to resume from",
        crate::device::describe(device),
        human(total)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_left_counts_the_rest_of_this_epoch_and_every_later_one() {
        assert_eq!(steps_left(3, 10, 0, 0), 30);
        assert_eq!(steps_left(3, 10, 0, 4), 26);
        assert_eq!(steps_left(3, 10, 2, 9), 1);
        assert_eq!(steps_left(3, 10, 2, 10), 0);
        assert_eq!(steps_left(3, 10, 3, 0), 0, "past the last epoch");
        // No overflow for absurd settings: 10⁹ epochs of 10⁶ steps.
        assert_eq!(steps_left(1_000_000_000, 1_000_000, 0, 0), 1_000_000_000_000_000);
    }

    #[test]
    fn estimate_is_the_mean_step_time_times_the_steps_left() {
        assert_eq!(estimate(100, 4, 2.0), Some(50.0));
        assert_eq!(estimate(0, 4, 2.0), Some(0.0));
        assert_eq!(estimate(100, 0, 0.0), None, "nothing timed yet");
        assert_eq!(estimate(100, 3, f64::NAN), None);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(0.4), "0 s");
        assert_eq!(human(59.0), "59 s");
        assert_eq!(human(90.0), "2 min");
        assert_eq!(human(3600.0), "1 h 0 min");
        assert_eq!(human(3.5 * 3600.0), "3 h 30 min");
        assert_eq!(human(5.0 * 86400.0), "5.0 days");
        assert_eq!(human(f64::INFINITY), "n/a");
    }

    /// The paper preset on a 2-core CPU: ~2 min per step, 1740 steps per fold → days: warned,
    /// with the CPU's advice. The same on CUDA at 0.2 s per step is 6 minutes: not warned.
    #[test]
    fn long_runs_are_warned_about_with_advice_for_the_device() {
        let (steps, per_step) = (1740, 120.0);
        let total = estimate(steps, 1, per_step).unwrap();
        let w = long_run_warning("fold 0 of 5", Device::Cpu, steps, per_step, total).expect("days on a CPU");
        assert!(w.contains("fold 0 of 5") && w.contains("2.4 days") && w.contains("1740 training steps left"), "{w}");
        assert!(w.contains("--preset tiny") && w.contains("--device cuda") && w.contains("--epochs"), "{w}");
        assert_eq!(long_run_warning("final", Device::Cuda(0), steps, 0.2, steps as f64 * 0.2), None);
        // Thresholds: an hour on the CPU, a day on CUDA.
        assert_eq!(long_run_warning("final", Device::Cpu, 10, 360.0, 3600.0), None);
        assert!(long_run_warning("final", Device::Cpu, 10, 361.0, 3610.0).is_some());
        let gpu = long_run_warning("final", Device::Cuda(0), 10, 9000.0, 90000.0).expect("over a day on CUDA");
        assert!(gpu.contains("--epochs") && !gpu.contains("--device cuda"), "{gpu}");
    }
}
