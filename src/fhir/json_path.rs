//! The dotted path of a JSON member (`agent.who.identifier`) that a refusal names, built only
//! when a refusal needs it.
//!
//! The checks of a create body (`fhir::registration`, `fhir::inert`) walk every member of a
//! 12 KB registration; building each member's path as a `String` on the way down cost more
//! than the checks themselves. A [`JsonPath`] is a chain of borrowed names on the stack:
//! going one level down costs nothing, and [`JsonPath::render`] writes the same text the
//! eager `format!("{path}.{name}")` did (names joined with `.`; array items add no segment).

/// One level of a path: its member name and the level above (`None` at the top).
#[derive(Clone, Copy, Debug)]
pub struct JsonPath<'a> {
    parent: Option<&'a JsonPath<'a>>,
    name: &'a str,
}

impl<'a> JsonPath<'a> {
    /// The document itself (renders as the empty string).
    pub const ROOT: JsonPath<'static> = JsonPath {
        parent: None,
        name: "",
    };

    /// The member `name` of the value at this path.
    pub fn child(&'a self, name: &'a str) -> JsonPath<'a> {
        JsonPath {
            parent: Some(self),
            name,
        }
    }

    /// The path as text: member names from the top, joined with `.`.
    pub fn render(&self) -> String {
        let mut names = Vec::new();
        let mut at = Some(self);
        while let Some(p) = at {
            if p.parent.is_some() {
                names.push(p.name);
            }
            at = p.parent;
        }
        // As the eager `format!` did: a `.` only after text (so a member named `""` adds no
        // segment of its own at the top: `{"": {"x": …}}` is `x`, not `.x`).
        names.iter().rev().fold(String::new(), |mut out, name| {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(name);
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::JsonPath;

    #[test]
    fn renders_like_the_dotted_strings_it_replaces() {
        assert_eq!(JsonPath::ROOT.render(), "");
        let agent = JsonPath::ROOT.child("agent");
        assert_eq!(agent.render(), "agent");
        let who = agent.child("who");
        let id = who.child("identifier");
        assert_eq!(id.render(), "agent.who.identifier");
        // A member named like a path keeps its dots, as the `format!` did.
        assert_eq!(agent.child("a.b").render(), "agent.a.b");
        // Empty member names: the eager `if path.is_empty() { name } else { path.name }`.
        let empty = JsonPath::ROOT.child("");
        assert_eq!(empty.render(), "");
        assert_eq!(empty.child("x").render(), "x");
        assert_eq!(empty.child("").child("x").render(), "x");
        assert_eq!(agent.child("").child("x").render(), "agent..x");
    }
}
