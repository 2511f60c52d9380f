//! Zed extension: registers the `infill-ls` language server. Zed runs custom language servers only through
//! an extension; settings come from `lsp.infill-ls` in Zed's settings.json (binary, initialization_options).
use zed_extension_api::{self as zed, settings::LspSettings, LanguageServerId, Result};

struct InfillExtension;

impl zed::Extension for InfillExtension {
    fn new() -> Self {
        InfillExtension
    }

    fn language_server_command(&mut self, id: &LanguageServerId, worktree: &zed::Worktree) -> Result<zed::Command> {
        let settings = LspSettings::for_worktree(id.as_ref(), worktree)?;
        let binary = settings.binary.unwrap_or_default();
        let command = match binary.path {
            Some(path) => path,
            None => worktree
                .which("infill-ls")
                .ok_or("infill-ls is not on PATH: install it or set lsp.infill-ls.binary.path")?,
        };
        let args = binary.arguments.unwrap_or_else(|| vec!["serve".to_string()]);
        Ok(zed::Command { command, args, env: Default::default() })
    }

    fn language_server_initialization_options(
        &mut self,
        id: &LanguageServerId,
        worktree: &zed::Worktree,
    ) -> Result<Option<zed::serde_json::Value>> {
        Ok(LspSettings::for_worktree(id.as_ref(), worktree)?.initialization_options)
    }

    fn language_server_workspace_configuration(
        &mut self,
        id: &LanguageServerId,
        worktree: &zed::Worktree,
    ) -> Result<Option<zed::serde_json::Value>> {
        Ok(LspSettings::for_worktree(id.as_ref(), worktree)?.settings)
    }
}

zed::register_extension!(InfillExtension);
