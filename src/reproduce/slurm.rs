//! Scale-out on Slurm: `DIR/slurm/job.sh` is an `sbatch --array` script whose task N runs
//! `magsd reproduce --unit N --out DIR`; results are gathered afterwards with `--collect`.
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Grid;
use crate::error::{Error, IoContext, Result, write_atomic};

/// Slurm options passed through to `#SBATCH` lines (absent ones are left to the cluster).
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub account: Option<String>,
    /// GPUs per array task (0: none requested, for CPU-only clusters).
    pub gpus_per_task: u32,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    /// At most this many array tasks at once (`--array=...%N`).
    pub max_parallel: Option<u32>,
    /// Further `sbatch` options, one per `#SBATCH` line (e.g. `--qos=long`).
    pub extra: Vec<String>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
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

/// Writes `DIR/slurm/job.sh` for the grid's pending units (`None`: nothing left to run).
/// `exe` is the magsd binary the tasks run; paths are made absolute so tasks can start anywhere.
pub fn write_job(grid: &Grid, exe: &Path, opts: &SlurmOptions) -> Result<Option<PathBuf>> {
    let pending: Vec<usize> = grid.pending()?.iter().map(|u| u.index).collect();
    if pending.is_empty() {
        return Ok(None);
    }
    let dir = std::path::absolute(&grid.dir).at(&grid.dir)?;
    let exe = std::path::absolute(exe).at(exe)?;
    let slurm = dir.join("slurm");
    std::fs::create_dir_all(&slurm).at(&slurm)?;
    let mut array = array_ranges(&pending);
    if let Some(n) = opts.max_parallel {
        array += &format!("%{n}");
    }
    let mut s = String::from("#!/bin/bash\n");
    s += "# Written by `magsd reproduce --slurm`: one array task = one row × fold unit of the grid.\n";
    s += "#SBATCH --job-name=magsd-reproduce\n";
    s += &format!("#SBATCH --array={array}\n");
    s += &format!("#SBATCH --output={}\n", slurm.join("unit-%a_job-%A.out").display());
    s += "#SBATCH --ntasks=1\n";
    if let Some(p) = &opts.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(t) = &opts.time {
        s += &format!("#SBATCH --time={t}\n");
    }
    if let Some(a) = &opts.account {
        s += &format!("#SBATCH --account={a}\n");
    }
    if opts.gpus_per_task > 0 {
        s += &format!("#SBATCH --gpus-per-task={}\n", opts.gpus_per_task);
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
    s += &format!(
        "exec {} reproduce --unit \"$SLURM_ARRAY_TASK_ID\" --out {} --quiet\n",
        quote(&exe.display().to_string()),
        quote(&dir.display().to_string())
    );
    let path = slurm.join("job.sh");
    write_atomic(&path, s.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).at(&path)?;
    }
    Ok(Some(path))
}

/// Submits `job` with `sbatch --parsable` (`--wait`: return when every task has ended);
/// returns the job id.
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
        eprintln!("sbatch: some array tasks of job {id} failed; `--collect` lists the missing units");
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
