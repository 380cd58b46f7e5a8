//! The `strongroom` binary: parse the command line, run it. No logic here.

use std::process::ExitCode;

use clap::Parser;

// The request path allocates many small strings and buffers; mimalloc serves them faster than
// glibc's allocator (measured with `strongroom bench`, see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = strongroom::cli::Cli::parse();
    cli.init_logging();
    strongroom::cli::run(cli).await
}
