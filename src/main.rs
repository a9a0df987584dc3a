//! The `tessera` binary: a dispatcher; the logic lives in the library.

fn main() -> anyhow::Result<()> {
    tessera::cli::main()
}
