//! The `psm` binary: all of it is `psm::cli::main`, so an extended binary
//! (see `examples/`) is the same program with more extensions registered.

use std::process::ExitCode;

fn main() -> ExitCode {
    psm::cli::main(psm::supervisor::Extensions::new())
}
