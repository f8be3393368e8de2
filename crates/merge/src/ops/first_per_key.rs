//! `DISTINCT ON (...)` over rows that arrive sorted by the distinct keys
//! first: the first row of each key passes, the rest are dropped.

use crate::key::Key;

/// Admits the first row of each run of equal leading keys.
#[derive(Debug, Default)]
pub struct FirstPerKey {
    width: usize,
    last: Option<Vec<Key>>,
}

impl FirstPerKey {
    /// Compares the first `width` keys of each row.
    pub fn new(width: usize) -> FirstPerKey {
        FirstPerKey { width, last: None }
    }

    /// Whether the row with these sort keys is the first of its distinct
    /// key (keys equal as GROUP BY compares them: NULLs equal each other).
    pub fn admit(&mut self, keys: &[Key]) -> bool {
        let lead = &keys[..self.width.min(keys.len())];
        let repeated = self.last.as_ref().is_some_and(|last| {
            last.len() == lead.len() && last.iter().zip(lead).all(|(a, b)| a.group_eq(b))
        });
        if !repeated {
            self.last = Some(lead.to_vec());
        }
        !repeated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_row_of_each_key_passes() {
        let mut f = FirstPerKey::new(1);
        let rows = [
            vec![Key::Int(1), Key::Int(10)],
            vec![Key::Int(1), Key::Int(11)],
            vec![Key::Int(2), Key::Int(5)],
            vec![Key::Null, Key::Int(1)],
            vec![Key::Null, Key::Int(2)],
        ];
        let passed: Vec<bool> = rows.iter().map(|r| f.admit(r)).collect();
        assert_eq!(passed, vec![true, false, true, true, false]);
    }

    #[test]
    fn keys_compare_by_value() {
        let mut f = FirstPerKey::new(2);
        let n = |s: &str| Key::Numeric(crate::Numeric::parse_text(s).unwrap());
        assert!(f.admit(&[n("1.0"), Key::Int(1)]));
        assert!(!f.admit(&[n("1.00"), Key::Int(1)]));
        assert!(f.admit(&[n("1.00"), Key::Int(2)]));
    }
}
