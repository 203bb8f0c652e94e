//! `layerskip generate`: streamed text, or one JSON object.

use super::{load, ModelArgs};
use layerskip::{GenerateRequest, Message, Result, Stats, Streamed, TokenKind};
use serde_json::json;
use std::io::{IsTerminal, Write};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to continue, or with --chat the user's message.
    #[arg(long)]
    prompt: String,
    /// Treat --prompt as a user message and render it with the model's chat template
    /// (tokenizer_config.json's `chat_template`), ending with the assistant's header.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    request: GenerateRequest,
    /// Colour accepted drafts green, rejected drafts red (struck through) and the full model's
    /// own tokens plain. Only when stdout is a terminal.
    #[arg(long)]
    show_speculation: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    args.request.validate()?;
    let mut model = load(&args.model)?;
    let colour = args.show_speculation && std::io::stdout().is_terminal();
    let mut stdout = std::io::stdout();
    let on_token = |s: Streamed<'_>| {
        if args.json {
            return true;
        }
        let text = match (colour, s.kind) {
            (true, TokenKind::Accepted) => format!("\x1b[32m{}\x1b[0m", s.text),
            (true, TokenKind::Rejected) => format!("\x1b[2;9;31m{}\x1b[0m", s.text),
            (_, TokenKind::Rejected) => return true,
            _ => s.text.to_string(),
        };
        let _ = write!(stdout, "{text}");
        let _ = stdout.flush();
        true
    };
    let completion = if args.chat {
        let messages: Vec<Message> = args
            .system
            .iter()
            .map(|s| Message::new("system", s.as_str()))
            .chain([Message::new("user", args.prompt.as_str())])
            .collect();
        pollster::block_on(model.chat(&messages, &args.request, on_token))?
    } else {
        pollster::block_on(model.generate(&args.prompt, &args.request, on_token))?
    };
    if args.json {
        println!("{}", json!(completion));
        return Ok(());
    }
    println!();
    eprintln!("{}", summary(&completion.stats));
    Ok(())
}

/// One line on how a generation went (stderr after streamed text; `/stats` in chat).
pub fn summary(s: &Stats) -> String {
    let speculation = if s.rounds > 0 {
        format!(
            ", {} rounds, acceptance {:.1}% ({} / {}), draft {:.0} ms, verify {:.0} ms",
            s.rounds,
            100.0 * s.acceptance_rate,
            s.accepted,
            s.drafted,
            s.draft_ms,
            s.verify_ms
        )
    } else {
        String::new()
    };
    format!(
        "[{}] {} prompt tokens ({} kept in the KV cache), {} tokens in {:.0} ms: {:.1} tokens/s, first token {:.0} ms, {:.1} dispatches/token, {:.2} submits/token{speculation}, stop: {}",
        s.strategy,
        s.prompt_tokens,
        s.cached_prompt_tokens,
        s.generated_tokens,
        s.elapsed_ms,
        s.tokens_per_second,
        s.time_to_first_token_ms,
        s.dispatches_per_token,
        s.submits_per_token,
        s.stop_reason
    )
}
