//! Response shaping for rewritten statements: the client must see the replies its own statement would get.

/// How a statement's responses must be reshaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Forward as the server sends it.
    Same,
    /// A DML statement sent as `WITH … SELECT … FROM __pgshift_old`: the tag `SELECT n` becomes the DML's tag,
    /// and without RETURNING the zero-column RowDescription and DataRows are dropped (Describe: NoData).
    Dml { tag: DmlTag, returning: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmlTag {
    Insert,
    Update,
    Delete,
}

impl Shape {
    /// Whether RowDescription and DataRow messages of this statement reach the client.
    pub fn keeps_rows(self) -> bool {
        !matches!(
            self,
            Shape::Dml {
                returning: false,
                ..
            }
        )
    }
}

/// The CommandComplete tag the client expects for `SELECT n`: `INSERT 0 n`, `UPDATE n`, `DELETE n`.
pub fn command_tag(tag: DmlTag, select_tag: &[u8]) -> Option<String> {
    let rows = std::str::from_utf8(select_tag.strip_prefix(b"SELECT ")?).ok()?;
    rows.parse::<u64>().ok()?;
    Some(match tag {
        DmlTag::Insert => format!("INSERT 0 {rows}"),
        DmlTag::Update => format!("UPDATE {rows}"),
        DmlTag::Delete => format!("DELETE {rows}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(
            command_tag(DmlTag::Insert, b"SELECT 3").as_deref(),
            Some("INSERT 0 3")
        );
        assert_eq!(
            command_tag(DmlTag::Update, b"SELECT 0").as_deref(),
            Some("UPDATE 0")
        );
        assert_eq!(
            command_tag(DmlTag::Delete, b"SELECT 12").as_deref(),
            Some("DELETE 12")
        );
        assert_eq!(command_tag(DmlTag::Delete, b"INSERT 0 1"), None);
        assert!(!Shape::Dml {
            tag: DmlTag::Insert,
            returning: false
        }
        .keeps_rows());
        assert!(Shape::Dml {
            tag: DmlTag::Insert,
            returning: true
        }
        .keeps_rows());
    }
}
