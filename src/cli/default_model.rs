//! The default model, embedded in the binary so `layerskip generate` works from any directory
//! without --model: a 6.6M-parameter LayerSkip checkpoint trained on the Python standard library
//! (src/default_model/MODEL_CARD.md).

use layerskip::MemoryFiles;
use std::borrow::Cow;

const FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../default_model/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../default_model/generation_config.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../default_model/tokenizer_config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../default_model/tokenizer.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../default_model/model.safetensors"),
    ),
];

pub fn files() -> MemoryFiles {
    MemoryFiles(
        FILES
            .iter()
            .map(|(name, bytes)| (name.to_string(), Cow::Borrowed(*bytes)))
            .collect(),
    )
}
