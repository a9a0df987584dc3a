//! The `tessera` binary: a dispatcher; the logic lives in the library.

use std::process::ExitCode;

/// A failure is one line on stderr, `Error: ` and the causes joined by `: `; never anyhow's
/// multi-line "Caused by" report or a backtrace (even with `RUST_BACKTRACE` set).
fn main() -> ExitCode {
    match tessera::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
