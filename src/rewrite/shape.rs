//! Response shaping for rewritten statements: the client must see the replies its own statement would get.

/// How a statement's responses must be reshaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Forward as the server sends it.
    Same,
    /// A DML statement sent as `WITH … SELECT … FROM __pgshift_old`: the tag `SELECT n` becomes the DML's tag,
    /// and without RETURNING the zero-column RowDescription and DataRows are dropped (Describe: NoData).
    /// `origins`: RETURNING fields to describe as the old columns they stand for (`new_primary` reads them
    /// from the new table).
    Dml {
        tag: DmlTag,
        returning: bool,
        origins: Option<std::sync::Arc<[Option<Origin>]>>,
    },
    /// A read routed to the new schema: RowDescription fields that come from an old column are described
    /// as that column (table OID, attribute number), as drivers' result-set metadata expects. `fields`: by
    /// position, where the query says; `remap`: any field Postgres describes as a new column, as its old one.
    Read {
        fields: std::sync::Arc<[Option<Origin>]>,
        remap: std::sync::Arc<[(Origin, Origin)]>,
    },
}

/// The old column an output field stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub table_oid: u32,
    pub attnum: i16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmlTag {
    Insert,
    Update,
    Delete,
}

impl Shape {
    /// Whether RowDescription and DataRow messages of this statement reach the client.
    pub fn keeps_rows(&self) -> bool {
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
            returning: false,
            origins: None,
        }
        .keeps_rows());
        assert!(Shape::Dml {
            tag: DmlTag::Insert,
            returning: true,
            origins: None,
        }
        .keeps_rows());
    }
}
