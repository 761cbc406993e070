use clap::Parser;

fn main() {
    let cli = magsd::cli::Cli::parse();
    match magsd::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
