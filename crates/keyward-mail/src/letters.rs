//! The letters keyward writes: what happened, the link, how long it works, and what to do if
//! it was not you, in plain text and in HTML (a `multipart/alternative` message).

use keyward_core::{Letter, TicketKind};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use maud::{html, Markup, DOCTYPE};
use std::str::FromStr;
use time::OffsetDateTime;

/// Why a letter could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The recipient is not an address lettre accepts.
    #[error("invalid recipient: {0}")]
    Recipient(#[from] lettre::address::AddressError),
    /// A ticket that is never mailed.
    #[error("this kind of ticket is never mailed")]
    NotMailed,
    /// The message could not be built.
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// The page a letter's link opens; `None` for a ticket that is never mailed.
fn page(kind: TicketKind) -> Option<&'static str> {
    match kind {
        TicketKind::VerifyEmail => Some("verify-email"),
        TicketKind::ResetPassword => Some("reset-password"),
        TicketKind::MfaSignIn => None,
    }
}

/// The link of a letter of `kind`: `{public URL}/{page}?token=…`.
pub fn link(kind: TicketKind, public_url: &url::Url, token: &str) -> Option<String> {
    Some(format!(
        "{}/{}?token={token}",
        public_url.as_str().trim_end_matches('/'),
        page(kind)?
    ))
}

fn site(public_url: &url::Url) -> String {
    public_url.host_str().unwrap_or("keyward").to_owned()
}

fn when(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&f).unwrap_or_default()
}

struct Text {
    subject: String,
    intro: String,
    action: &'static str,
    button: &'static str,
    after: &'static str,
    not_you: &'static str,
}

fn text(letter: &Letter, site: &str) -> Option<Text> {
    Some(match letter.kind {
        TicketKind::VerifyEmail => Text {
            subject: format!("Confirm your email address on {site}"),
            intro: format!(
                "Someone, hopefully you, asked to use this address ({}) for the account \"{}\" on {site}.",
                letter.to, letter.username
            ),
            action: "To confirm it, open this link and press the button on the page:",
            button: "Confirm this address",
            after: "Once confirmed, password-reset links for the account can be sent here.",
            not_you: "If this was not you, ignore this mail: the address will not be added to any account.",
        },
        TicketKind::ResetPassword => Text {
            subject: format!("Reset your password on {site}"),
            intro: format!(
                "Someone asked to reset the password of the account \"{}\" on {site}.",
                letter.username
            ),
            action: "To choose a new password, open this link:",
            button: "Choose a new password",
            after: "Setting a new password signs the account out everywhere. If the account has a second factor, it is still asked for at the next sign-in.",
            not_you: "If you did not ask for this, ignore this mail: your password stays as it is, and nobody can use the link without this mailbox.",
        },
        TicketKind::MfaSignIn => return None,
    })
}

fn html_body(t: &Text, link: &str, valid: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (t.subject) } }
            body style="font-family: system-ui, sans-serif; line-height: 1.5; color: #1b1b1b; max-width: 36rem;" {
                p { (t.intro) }
                p { (t.action) }
                p {
                    a href=(link) style="display: inline-block; padding: .6rem 1rem; background: #1d4ed8; color: #fff; border-radius: .4rem; text-decoration: none;" { (t.button) }
                }
                p style="font-size: .9rem; color: #555;" { "Or copy this address into your browser: " br; (link) }
                p { (valid) }
                p { (t.after) }
                p { (t.not_you) }
            }
        }
    }
}

/// The whole message (RFC 5322) for `letter`, from `from`, with its link under `public_url`.
pub fn render(
    letter: &Letter,
    from: &Mailbox,
    public_url: &url::Url,
    _now: OffsetDateTime,
) -> Result<Vec<u8>, RenderError> {
    let site = site(public_url);
    let link =
        link(letter.kind, public_url, letter.token.expose()).ok_or(RenderError::NotMailed)?;
    let t = text(letter, &site).ok_or(RenderError::NotMailed)?;
    let valid = format!(
        "The link works once, for {} (until {}).",
        letter.kind.lasting(),
        when(letter.expires_at)
    );
    let plain = format!(
        "Hello {},\n\n{}\n\n{}\n\n{link}\n\n{valid}\n\n{}\n\n{}\n",
        letter.username, t.intro, t.action, t.after, t.not_you
    );
    let to = Mailbox::new(None, Address::from_str(&letter.to)?);
    let message = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(&t.subject)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(plain),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html_body(&t, &link, &valid).into_string()),
                ),
        )?;
    Ok(message.formatted())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::{SessionToken, UserId};

    #[test]
    fn a_reset_letter_says_what_happened_and_carries_its_link() {
        let token = SessionToken::generate().unwrap();
        let secret = token.expose().to_owned();
        let letter = Letter {
            kind: TicketKind::ResetPassword,
            user_id: UserId::new(),
            username: "alice".into(),
            to: "alice@example.com".into(),
            token,
            expires_at: time::macros::datetime!(2026-12-04 12:30 UTC),
        };
        let url = url::Url::parse("https://auth.example.com/kw/").unwrap();
        let from: Mailbox = "keyward <no-reply@example.com>".parse().unwrap();
        let raw =
            String::from_utf8(render(&letter, &from, &url, OffsetDateTime::UNIX_EPOCH).unwrap())
                .unwrap();
        assert!(
            raw.contains("Subject: Reset your password on auth.example.com"),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"));
        // The body's transfer encoding may fold the link; the integration tests read it back
        // with Python's mail parser.
        assert_eq!(
            link(TicketKind::ResetPassword, &url, &secret),
            Some(format!(
                "https://auth.example.com/kw/reset-password?token={secret}"
            ))
        );
        let mfa = Letter {
            kind: TicketKind::MfaSignIn,
            ..letter
        };
        assert!(matches!(
            render(&mfa, &from, &url, OffsetDateTime::UNIX_EPOCH),
            Err(RenderError::NotMailed)
        ));
    }
}
