//! The `strongroom` binary: parse the command line, run it. No logic here.

use std::process::ExitCode;

use clap::Parser;

// The request path allocates many small strings and buffers; mimalloc serves them faster than
// glibc's allocator (measured with `strongroom bench`, see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    strongroom::cli::run(strongroom::cli::Cli::parse()).await
}
