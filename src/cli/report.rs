//! `magsd report`: (re)writes a training run's report.
use std::path::Path;

use crate::error::{Error, Result};
use crate::runfolder;

pub fn report(run: &Path) -> Result<i32> {
    if !run.join(runfolder::RUN_FILE).is_file() {
        return Err(Error::Config(runfolder::not_a_run(run)));
    }
    let html = crate::report::run::write_run_report(run)?;
    println!("report: {}", html.display());
    Ok(0)
}
