//! Embeds every WGSL file under shaders/ by its path there ("matvec.wgsl", "formats/q8.wgsl"),
//! so a new kernel or weight format's include needs no list kept by hand.

use std::path::{Path, PathBuf};

fn wgsl_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            wgsl_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "wgsl") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = vec![];
    wgsl_files(&root, &mut files)?;
    files.sort();
    let mut code = String::from(
        "/// Every shader file, by its path under shaders/.\npub const SHADERS: &[(&str, &str)] = &[\n",
    );
    for path in &files {
        let name = path
            .strip_prefix(&root)
            .expect("found under shaders/")
            .to_string_lossy()
            .replace('\\', "/");
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("shaders.rs"), code)
}
