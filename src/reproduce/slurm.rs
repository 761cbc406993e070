//! Scale-out on Slurm: `DIR/slurm/job.sh` is an `sbatch --array` script whose task N runs
//! `magsd reproduce --unit N --out DIR`; results are gathered afterwards with `--collect`.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{Grid, shell_quote};
use crate::error::{Error, IoContext, Result, write_atomic};
use crate::runfolder::{read_json, write_json};

/// The options of the grid's last submission (`DIR/slurm/options.json`), reused for options a
/// later `--slurm` does not give again.
pub const OPTIONS_FILE: &str = "options.json";

/// Slurm options passed through to `#SBATCH` lines (absent ones are left to the cluster).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub account: Option<String>,
    /// GPUs per array task (0: none requested, for CPU-only clusters; default 1).
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    /// At most this many array tasks at once (`--array=...%N`).
    pub max_parallel: Option<u32>,
    /// Further `sbatch` options, one per `#SBATCH` line (e.g. `--qos=long`).
    #[serde(default)]
    pub extra: Vec<String>,
    /// Shell lines run before magsd in every task (e.g. `module load cuda/12.1`).
    #[serde(default)]
    pub setup: Vec<String>,
    /// The signal Slurm sends before the time limit (`--signal=B:VALUE`; default USR1@120).
    pub signal: Option<String>,
    /// Requeue (default): `#SBATCH --requeue`, and a task stopped by the time-limit signal
    /// (when it is USR1) requeues itself. `Some(false)`: `#SBATCH --no-requeue`, and neither.
    pub requeue: Option<bool>,
}

impl SlurmOptions {
    /// These options, with the remembered ones where these give none.
    pub fn or(self, old: SlurmOptions) -> SlurmOptions {
        SlurmOptions {
            partition: self.partition.or(old.partition),
            time: self.time.or(old.time),
            account: self.account.or(old.account),
            gpus_per_task: self.gpus_per_task.or(old.gpus_per_task),
            cpus_per_task: self.cpus_per_task.or(old.cpus_per_task),
            mem: self.mem.or(old.mem),
            max_parallel: self.max_parallel.or(old.max_parallel),
            extra: if self.extra.is_empty() { old.extra } else { self.extra },
            setup: if self.setup.is_empty() { old.setup } else { self.setup },
            signal: self.signal.or(old.signal),
            requeue: self.requeue.or(old.requeue),
        }
    }

    /// Every value is checked against a strict pattern before it is written into job.sh: no
    /// control characters anywhere (a newline would start a line of its own), and only the
    /// characters each option's Slurm syntax needs.
    pub fn check(&self) -> Result<()> {
        let name_chars = |c: char| c.is_ascii_alphanumeric() || "_.,-".contains(c);
        let bad = |opt: &str, v: &str, why: &str| Error::Config(format!("{opt} {v:?}: {why}"));
        for (opt, v) in [("--partition", &self.partition), ("--account", &self.account)] {
            if let Some(v) = v
                && (v.is_empty() || !v.chars().all(name_chars))
            {
                return Err(bad(opt, v, "use letters, digits, '_', '.', ',' and '-' only"));
            }
        }
        if let Some(t) = &self.time
            && !valid_time(t)
        {
            return Err(bad("--time", t, "use Slurm's time syntax: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"));
        }
        if let Some(m) = &self.mem {
            let digits = m.trim_end_matches(['K', 'M', 'G', 'T']);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || m.len() > digits.len() + 1 || digits.parse::<u64>().ok() == Some(0) {
                return Err(bad("--mem", m, "a positive size such as 16G, 4000M or 4000"));
            }
        }
        if self.cpus_per_task == Some(0) {
            return Err(Error::Config("--cpus-per-task must be at least 1".into()));
        }
        if self.max_parallel == Some(0) {
            return Err(Error::Config("--max-parallel must be at least 1 (it is the most array tasks that run at once)".into()));
        }
        for e in &self.extra {
            let (key, value) = e.split_once('=').unwrap_or((e.as_str(), ""));
            let key_ok = key.len() > 2 && key.starts_with("--") && key[2..].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            let value_ok = value.chars().all(|c| c.is_ascii_alphanumeric() || "_.,:=/@+-".contains(c)) && (value.is_empty() != e.contains('='));
            if !key_ok || !value_ok {
                return Err(bad("--sbatch", e, "one long option such as --qos=long (letters, digits and _.,:=/@+- in its value, no spaces)"));
            }
            if ["--array", "--output", "--error", "--wrap", "--job-name", "--signal", "--requeue", "--no-requeue", "--export", "--open-mode"]
                .contains(&key)
            {
                return Err(bad("--sbatch", e, "magsd writes this option itself (see --signal, --no-requeue)"));
            }
        }
        for line in &self.setup {
            if line.trim().is_empty() || line.chars().any(char::is_control) {
                return Err(bad("--setup", line, "one non-empty line without control characters (give --setup once per line)"));
            }
        }
        if let Some(sig) = &self.signal {
            let ok = sig.split_once('@').is_some_and(|(name, secs)| {
                ["USR1", "TERM", "INT"].contains(&name) && !secs.is_empty() && secs.len() <= 5 && secs.chars().all(|c| c.is_ascii_digit())
            });
            if !ok {
                return Err(bad("--signal", sig, "SIGNAL@SECONDS with USR1, TERM or INT, e.g. USR1@120"));
            }
        }
        Ok(())
    }
}

/// Slurm's time formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, or UNLIMITED.
fn valid_time(t: &str) -> bool {
    if t == "UNLIMITED" || t == "INFINITE" {
        return true;
    }
    let numbers = |s: &str, most: usize| {
        let parts: Vec<&str> = s.split(':').collect();
        parts.len() <= most && parts.iter().all(|p| !p.is_empty() && p.len() <= 6 && p.chars().all(|c| c.is_ascii_digit()))
    };
    match t.split_once('-') {
        Some((days, rest)) => numbers(days, 1) && numbers(rest, 3),
        None => numbers(t, 3),
    }
}

/// A path that goes into an `#SBATCH` line (not read by a shell, and Slurm expands `%`): only
/// characters that need no quoting.
pub fn check_sbatch_path(what: &str, p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| Error::Config(format!("{what} {p:?}: not UTF-8")))?;
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || "/._+,:=@-".contains(c)) {
        return Err(Error::Config(format!(
            "{what} {s:?}: with --slurm it goes into #SBATCH lines, so it may hold only letters, digits and /._+,:=@- \
             (no spaces, quotes, '%' or control characters); choose another --out"
        )));
    }
    Ok(s.to_string())
}

/// The remembered options of the grid's last submission (empty when none).
pub fn remembered(grid: &Grid) -> Result<SlurmOptions> {
    let path = grid.dir.join("slurm").join(OPTIONS_FILE);
    if path.exists() { read_json(&path) } else { Ok(SlurmOptions::default()) }
}

/// The array ranges of `indices` (`0-3,7,9-10`).
pub fn array_ranges(indices: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        out.push(if i == j { indices[i].to_string() } else { format!("{}-{}", indices[i], indices[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// Writes `DIR/slurm/job.sh` for the grid's pending units (`None`: nothing left to run) and
/// remembers `opts` in `DIR/slurm/options.json`. `exe` is the magsd binary the tasks run (it must
/// exist and be executable); paths are made absolute so tasks can start anywhere. Warnings (no
/// time or memory limit) go to stderr.
pub fn write_job(grid: &Grid, exe: &Path, opts: &SlurmOptions) -> Result<Option<PathBuf>> {
    opts.check()?;
    let pending: Vec<usize> = grid.pending()?.iter().map(|u| u.index).collect();
    if pending.is_empty() {
        return Ok(None);
    }
    let dir = std::path::absolute(&grid.dir).at(&grid.dir)?;
    let exe = std::path::absolute(exe).at(exe)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&exe).at(&exe)?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(Error::Config(format!("{}: the magsd binary the tasks would run is not an executable file", exe.display())));
        }
    }
    if exe.to_str().is_none_or(|s| s.chars().any(char::is_control)) {
        return Err(Error::Config(format!("{exe:?}: the magsd binary's path holds control characters or is not UTF-8")));
    }
    let slurm = dir.join("slurm");
    // Slurm expands the pattern's own %a (task) and %A (job); the grid's path may hold no '%'.
    let output = format!("{}/slurm/unit-%a_job-%A.out", check_sbatch_path("--out", &dir)?.trim_end_matches('/'));
    std::fs::create_dir_all(&slurm).at(&slurm)?;
    if opts.time.is_none() {
        eprintln!("warning: no --time: each task gets the partition's default time limit (often short), and Slurm stops it there");
    }
    if opts.mem.is_none() {
        eprintln!("warning: no --mem: each task gets the partition's default memory, which may be too little for a full-size network");
    }
    let mut array = array_ranges(&pending);
    if let Some(n) = opts.max_parallel {
        array += &format!("%{n}");
    }
    let signal = opts.signal.as_deref().unwrap_or("USR1@120");
    let requeue = opts.requeue.unwrap_or(true);
    // Only SIGUSR1 says "time limit": SIGTERM and SIGINT also come from scancel and Ctrl-C.
    let self_requeue = requeue && signal.starts_with("USR1@");
    let mut s = String::from("#!/bin/bash\n");
    s += "# Written by `magsd reproduce --slurm`: one array task = one row × fold unit of the grid.\n";
    s += "# Every value was checked (no spaces, quotes or control characters) and the command's paths are\n";
    s += "# shell-quoted. Tasks inherit the submitting shell's environment (--export=ALL), libtorch's\n";
    s += "# LD_LIBRARY_PATH included. Before the time limit Slurm sends the signal below: the unit saves a\n";
    s += "# checkpoint after its current step and stops.\n";
    if self_requeue {
        s += "# With --slurm-requeue it then requeues its own task (scontrol requeue), which continues from\n";
        s += "# the checkpoint; with --requeue Slurm requeues a preempted task itself. The log is appended to.\n";
    } else if requeue {
        s += "# It is not requeued (the signal is not USR1): rerun `magsd reproduce --slurm` to resubmit what is\n";
        s += "# unfinished. With --requeue Slurm requeues a preempted task, which continues from its checkpoint.\n";
    } else {
        s += "# Nothing is requeued (--no-requeue): rerun `magsd reproduce --slurm` to resubmit what is unfinished.\n";
    }
    s += "#SBATCH --job-name=magsd-reproduce\n";
    s += &format!("#SBATCH --array={array}\n");
    s += &format!("#SBATCH --output={output}\n");
    s += "#SBATCH --ntasks=1\n";
    s += "#SBATCH --export=ALL\n";
    s += &format!("#SBATCH --signal=B:{signal}\n");
    s += if requeue { "#SBATCH --requeue\n#SBATCH --open-mode=append\n" } else { "#SBATCH --no-requeue\n" };
    if let Some(p) = &opts.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(t) = &opts.time {
        s += &format!("#SBATCH --time={t}\n");
    }
    if let Some(a) = &opts.account {
        s += &format!("#SBATCH --account={a}\n");
    }
    let gpus = opts.gpus_per_task.unwrap_or(1);
    if gpus > 0 {
        s += &format!("#SBATCH --gpus-per-task={gpus}\n");
    }
    if let Some(c) = opts.cpus_per_task {
        s += &format!("#SBATCH --cpus-per-task={c}\n");
    }
    if let Some(m) = &opts.mem {
        s += &format!("#SBATCH --mem={m}\n");
    }
    for e in &opts.extra {
        s += &format!("#SBATCH {e}\n");
    }
    s += "set -euo pipefail\n";
    if !opts.setup.is_empty() {
        s += "# --setup lines, as given:\n";
        for line in &opts.setup {
            s += line;
            s += "\n";
        }
    }
    s += &format!(
        "exec {} reproduce --unit \"$SLURM_ARRAY_TASK_ID\" --out {}{}\n",
        shell_quote(&exe.display().to_string()),
        shell_quote(&dir.display().to_string()),
        if self_requeue { " --slurm-requeue" } else { "" }
    );
    let path = slurm.join("job.sh");
    write_atomic(&path, s.as_bytes())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).at(&path)?;
    }
    write_json(&slurm.join(OPTIONS_FILE), opts)?;
    Ok(Some(path))
}

/// The most times a task requeues itself (Slurm's `SLURM_RESTART_COUNT`, which counts
/// preemptions too): a unit that makes no progress within its time limit stops requeueing.
pub const MAX_REQUEUES: u32 = 20;

/// Requeues this Slurm task (`scontrol requeue $SLURM_JOB_ID`, as submitit does at the time
/// limit); returns its job id. Called by a unit that stopped with a checkpoint; the requeued task
/// runs the same unit, which continues from it. Slurm then ends this run of the task.
pub fn requeue_self() -> Result<String> {
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    if job.is_empty() || !job.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::Config(format!("--slurm-requeue: SLURM_JOB_ID is {job:?}, not a Slurm job id; is this a Slurm task?")));
    }
    let restarts: u32 = std::env::var("SLURM_RESTART_COUNT").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if restarts >= MAX_REQUEUES {
        return Err(Error::Config(format!(
            "job {job} has been requeued {restarts} times (the most is {MAX_REQUEUES}); not requeueing it again: give \
             --time more, then rerun `magsd reproduce --slurm`"
        )));
    }
    let out = Command::new("scontrol")
        .args(["requeue", &job])
        .output()
        .map_err(|e| Error::Config(format!("cannot run scontrol to requeue job {job}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "scontrol requeue {job} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(job)
}

/// Submits `job` with `sbatch --parsable` (`--wait`: return when every task has ended);
/// returns the job id (with `--wait`, `sbatch` reports failed tasks by its status; the caller
/// lists the units without a result).
pub fn submit(job: &Path, wait: bool) -> Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if wait {
        cmd.arg("--wait");
    }
    let out = cmd.arg(job).output().map_err(|e| {
        Error::Config(format!("cannot run sbatch ({e}); is Slurm installed here? The job script is {}", job.display()))
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.lines().next().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_string();
    if !out.status.success() && (id.is_empty() || !wait) {
        return Err(Error::Config(format!(
            "sbatch {} failed ({}): {}",
            job.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // With --wait sbatch exits non-zero when a task failed; the job was still submitted.
    if !out.status.success() {
        eprintln!("sbatch: some array tasks of job {id} failed or were cancelled");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_ranges_compress_runs() {
        assert_eq!(array_ranges(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_ranges(&[0, 2, 3, 4, 9]), "0,2-4,9");
        assert_eq!(array_ranges(&[5]), "5");
    }
}
