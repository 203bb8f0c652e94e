//! `layerskip chat`: a conversation in the terminal. Each line is a user message; the reply
//! streams as it is generated. The model keeps the conversation's KV cache between turns, so a
//! turn computes only its new messages. Ctrl-C stops the reply being written (the partial reply
//! stays in the conversation); at the prompt it ends the program, as does end of input.

use super::generate::summary;
use super::{load, ModelArgs};
use layerskip::{GenerateRequest, Message, Result, Stats, TokenKind};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message opening the conversation (kept by /reset).
    #[arg(long)]
    system: Option<String>,
    /// Colour accepted drafts green and the full model's own tokens plain (a terminal only).
    #[arg(long)]
    show_speculation: bool,
    #[command(flatten)]
    request: GenerateRequest,
}

const HELP: &str = "/reset starts the conversation again, /stats shows how the last reply went, /help this; Ctrl-C stops a reply, Ctrl-D or Ctrl-C at the prompt ends";

pub fn run(args: ChatArgs) -> Result<()> {
    args.request.validate()?;
    let mut model = load(&args.model)?;
    // Fails now, not at the first message, when the model has no chat template.
    model.chat_template()?;
    let generating = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (generating, interrupted) = (generating.clone(), interrupted.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        })
        .map_err(|e| layerskip::Error::Invalid(format!("cannot catch Ctrl-C: {e}")))?;
    }
    let terminal = std::io::stdin().is_terminal();
    let colour = args.show_speculation && std::io::stdout().is_terminal();
    if terminal {
        eprintln!("{HELP}");
    }
    let opening: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.as_str()))
        .collect();
    let mut messages = opening.clone();
    let mut last: Option<Stats> = None;
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout();
    loop {
        if terminal {
            print!("> ");
            let _ = stdout.flush();
        }
        let mut line = String::new();
        if stdin
            .read_line(&mut line)
            .map_err(|e| layerskip::Error::Invalid(format!("stdin: {e}")))?
            == 0
        {
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/reset" => {
                messages.clone_from(&opening);
                eprintln!("(conversation reset)");
                continue;
            }
            "/stats" => {
                match &last {
                    Some(s) => eprintln!("{}", summary(s)),
                    None => eprintln!("(no reply yet)"),
                }
                continue;
            }
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            // A mistyped command would otherwise go to the model as a message.
            word if word.starts_with('/') && !word.contains(char::is_whitespace) => {
                eprintln!("unknown command {word}; {HELP}");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        interrupted.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let reply = pollster::block_on(model.chat(&messages, &args.request, |s| {
            let text = match (colour, s.kind) {
                (_, TokenKind::Rejected) => return !interrupted.load(Ordering::SeqCst),
                (true, TokenKind::Accepted) => format!("\x1b[32m{}\x1b[0m", s.text),
                _ => s.text.to_string(),
            };
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
            !interrupted.load(Ordering::SeqCst)
        }));
        generating.store(false, Ordering::SeqCst);
        println!();
        match reply {
            Ok(reply) => {
                messages.push(Message::new("assistant", reply.text));
                last = Some(reply.stats);
            }
            Err(e) => {
                // The message stays unanswered: take it back so the conversation still renders.
                messages.pop();
                eprintln!("error: {e}");
            }
        }
    }
}
