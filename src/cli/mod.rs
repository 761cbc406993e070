//! The `magsd` command line: argument parsing and printing only; the work is in the library.
use clap::{Parser, Subcommand};

pub mod data;
pub mod model;

#[derive(Parser, Debug)]
#[command(
    name = "magsd",
    version,
    about = "Train, evaluate and explain MAG-SD chest X-ray classifiers",
    long_about = "Train, evaluate and explain MAG-SD chest X-ray classifiers (Li et al., arXiv 2012.02278):\n\
                  a ResNet with multiscale attention, attention-guided augmentation and a soft-distance loss.",
    after_help = "Examples:\n  magsd demo                                   # a complete run on generated phantoms\n  magsd data summary --data ../shared/data/cxr/manifest.csv\n  magsd <command> --help                       # every command has examples"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect, summarise, split and check image data.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Describe networks and weight files.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> crate::Result<i32> {
    match cli.command {
        Command::Data(c) => data::run(c),
        Command::Model(c) => model::run(c),
    }
}

/// Options shared by every command that reads a dataset.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// An ImageFolder root (one folder per class), a folder with a manifest.csv, or a manifest CSV.
    #[arg(long)]
    pub data: std::path::PathBuf,
    /// Manifest column holding the labels (e.g. `label3` for the 3-class task).
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Keep only these classes, in this order (comma-separated); default: every label found.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
}

impl DataArgs {
    pub fn options(&self) -> crate::data::dataset::DatasetOptions {
        crate::data::dataset::DatasetOptions { label_column: self.label_column.clone(), classes: self.classes.clone() }
    }

    pub fn open(&self) -> crate::Result<crate::data::dataset::Dataset> {
        crate::data::dataset::Dataset::open(&self.data, &self.options())
    }
}
