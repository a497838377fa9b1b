//! systemd's word splitting for settings such as `ExecStart=` and `Environment=`: words are
//! separated by whitespace, `"..."` and `'...'` quote (the quotes are dropped), and C-style
//! escapes (`\n`, `\t`, `\\`, `\"`, `\'`, `\xNN`, `\ `) are decoded.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordsError {
    #[error("unterminated {0} quote in {1:?}")]
    UnterminatedQuote(char, String),
    #[error("invalid escape sequence in {0:?}")]
    BadEscape(String),
}

/// Splits `text` into words as systemd does for command lines and environment assignments.
pub fn split_words(text: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            match c {
                '"' | '\'' => read_quoted(&mut chars, c, &mut word, text)?,
                '\\' => word.push(read_escape(&mut chars, text)?),
                other => word.push(other),
            }
        }
        words.push(word);
    }
}

fn read_quoted(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
    word: &mut String,
    text: &str,
) -> Result<(), WordsError> {
    loop {
        match chars.next() {
            None => return Err(WordsError::UnterminatedQuote(quote, text.to_string())),
            Some(c) if c == quote => return Ok(()),
            Some('\\') => word.push(read_escape(chars, text)?),
            Some(c) => word.push(c),
        }
    }
}

fn read_escape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    text: &str,
) -> Result<char, WordsError> {
    let bad = || WordsError::BadEscape(text.to_string());
    let decoded = match chars.next().ok_or_else(bad)? {
        'n' => '\n',
        't' => '\t',
        'r' => '\r',
        'a' => '\x07',
        'b' => '\x08',
        'f' => '\x0c',
        'v' => '\x0b',
        's' => ' ',
        'x' => {
            let high = chars.next().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
            let low = chars.next().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
            char::from_u32(high * 16 + low).ok_or_else(bad)?
        }
        other => other,
    };
    Ok(decoded)
}
