use clap::Parser;

fn main() {
    let cli = magsd::cli::Cli::parse();
    if !matches!(cli.command, magsd::cli::Command::Serve(_)) {
        // Rust ignores SIGPIPE, so printing into a closed pipe (`magsd data summary … | head -1`)
        // made `println!` panic. A command-line tool should end quietly there, as `cat` does:
        // restore the default action. `serve` keeps ignoring it (a client that hangs up must
        // not stop the server; its sockets report EPIPE as an error instead).
        // SAFETY: only sets the process-wide disposition to the default; no handler runs Rust code.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match magsd::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
