//! The `layerskip` command-line tool.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let runtime_dir = quiet_wayland();
    let result = cli::main();
    if let Some(dir) = runtime_dir {
        let _ = std::fs::remove_dir(dir);
    }
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// wgpu's GL backend probes EGL, whose Wayland client prints "XDG_RUNTIME_DIR is invalid or not
/// set" twice on machines without a login session (servers, CI, containers). A private, empty
/// runtime folder for the life of the process silences it.
#[cfg(not(target_arch = "wasm32"))]
fn quiet_wayland() -> Option<std::path::PathBuf> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("layerskip-runtime-{}", std::process::id()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).ok()?;
    // Still single-threaded: nothing else reads the environment yet.
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
    Some(dir)
}

#[cfg(target_arch = "wasm32")]
fn main() {}
