//! `layerskip bench --peers`: llama.cpp and Hugging Face transformers on the same GGUF file,
//! prompts and threads, run by `peers.py` in one python3 process that stays up for the whole
//! bench. Each repetition of the bench's own runs is followed by one of the peers', so a change
//! in the machine's load (which moves decode rates by 10-20% on a shared host) lands on both
//! sides of a ratio instead of between them.

use super::bench::{median, paired};
use layerskip::{Error, Result};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The peer process, and the rates its timed repetitions gave so far.
pub struct Peers {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Per peer: its version, or why it did not run (`skipped`, `error`).
    infos: Map<String, Value>,
    /// Per peer: [prefill, decode] tokens/s of every prompt of every timed repetition.
    rates: Map<String, Value>,
}

impl Peers {
    /// Starts the peers on `model` (a GGUF file) and waits until each has loaded or failed to.
    pub fn start(
        model: &Path,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        threads: usize,
    ) -> Result<Peers> {
        let request = json!({
            "model": model,
            "prompts": prompts,
            "max_new_tokens": max_new_tokens,
            "threads": threads,
        });
        let mut child = Command::new("python3")
            .args(["-c", include_str!("peers.py")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed(format!("could not start: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(failed("has no pipes".into()));
        };
        let mut peers = Peers {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            infos: Map::new(),
            rates: Map::new(),
        };
        peers.infos = match peers.ask(&request.to_string())? {
            Value::Object(infos) => infos,
            other => return Err(failed(format!("answered {other} for its peers"))),
        };
        Ok(peers)
    }

    /// One repetition of every prompt on each peer; kept unless it is the warm-up.
    pub fn repetition(&mut self, warm_up: bool) -> Result<()> {
        let Value::Object(answer) = self.ask("run")? else {
            return Err(failed("answered a repetition with no object".into()));
        };
        for (name, rates) in answer {
            match rates {
                Value::Array(rates) if !warm_up => {
                    let all = self.rates.entry(name).or_insert_with(|| json!([]));
                    if let Value::Array(all) = all {
                        all.extend(rates);
                    }
                }
                Value::Array(_) => {}
                error => {
                    self.rates.remove(&name);
                    self.infos.insert(name, error);
                }
            }
        }
        Ok(())
    }

    /// Per peer: its version, median prefill and decode tokens/s, and how much faster `prefill`
    /// and `decode` (this runtime's rates, run for run in the peers' order) were, or why it did
    /// not run.
    pub fn results(&self, prefill: &[f64], decode: &[f64]) -> Value {
        let mut out = self.infos.clone();
        for (name, rates) in &self.rates {
            let rates = rates.as_array().map_or(&[][..], Vec::as_slice);
            let column = |i: usize| -> Vec<f64> {
                rates.iter().map(|r| r[i].as_f64().unwrap_or(0.0)).collect()
            };
            let (peer_prefill, peer_decode) = (column(0), column(1));
            if let Some(Value::Object(info)) = out.get_mut(name) {
                let (prefill, decode) =
                    (paired(prefill, &peer_prefill), paired(decode, &peer_decode));
                for (key, value) in [
                    (
                        "prefill_tokens_per_second",
                        json!(median(peer_prefill.clone())),
                    ),
                    (
                        "decode_tokens_per_second",
                        json!(median(peer_decode.clone())),
                    ),
                    ("prefill_speedup", json!(prefill.median)),
                    ("prefill_speedup_interval", json!(prefill.interval)),
                    ("decode_speedup", json!(decode.median)),
                    ("decode_speedup_interval", json!(decode.interval)),
                ] {
                    info.insert(key.into(), value);
                }
            }
        }
        Value::Object(out)
    }

    /// Sends `line` and reads the one JSON line that answers it.
    fn ask(&mut self, line: &str) -> Result<Value> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| failed(format!("did not take a request: {e}")))?;
        let mut answer = String::new();
        match self.stdout.read_line(&mut answer) {
            Ok(0) => Err(failed(
                "exited without answering (see its error above)".into(),
            )),
            Ok(_) => serde_json::from_str(&answer)
                .map_err(|e| failed(format!("answered no JSON ({e}): {}", answer.trim()))),
            Err(e) => Err(failed(format!("could not be read: {e}"))),
        }
    }
}

impl Drop for Peers {
    /// The peers have nothing to finish: ended, not asked to.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn failed(why: String) -> Error {
    Error::Invalid(format!("--peers: python3 {why}"))
}
