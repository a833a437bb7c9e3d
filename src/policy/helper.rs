//! Errors raised by the Rust helpers Lua calls, located at the calling Lua line. A leaf: the
//! sandbox, the string library and the host API all use it.

use mlua::Lua;

/// `path:line: ` of the Lua code calling the current Rust function, for helper errors.
pub(crate) fn caller(lua: &Lua) -> String {
    lua.inspect_stack(1, |d| {
        let src = d
            .source()
            .short_src
            .map(|s| s.into_owned())
            .unwrap_or_default();
        match d.current_line() {
            Some(line) => format!("{src}:{line}: "),
            None => String::new(),
        }
    })
    .unwrap_or_default()
}

pub(crate) fn helper_error(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{}{msg}", caller(lua)))
}
