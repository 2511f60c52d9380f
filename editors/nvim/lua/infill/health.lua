-- :checkhealth infill
local M = {}

function M.check()
  local health = vim.health
  local infill = require("infill")
  health.start("infill: Neovim")
  local v = vim.version()
  local version = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  if vim.fn.has("nvim-0.12") == 1 and vim.lsp.inline_completion then
    health.ok("Neovim " .. version .. ": built-in vim.lsp.inline_completion")
  elseif vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. version .. ": the plugin's own ghost text (extmarks)")
  else
    health.error("Neovim " .. version .. " is too old: 0.10 or newer is needed")
  end
  health.info("inline mode: " .. (infill.use_native() and "native" or "ghost") .. " (setup option `inline`)")

  health.start("infill: server")
  local cmd = infill.config.cmd or infill.find_server()
  if type(cmd) == "string" then
    cmd = { cmd }
  end
  if vim.fn.executable(cmd[1]) ~= 1 then
    health.error("`" .. cmd[1] .. "` is not executable", {
      "Install infill-ls (`pipx install infill-ls` or `make setup` in its checkout)",
      "or pass setup({ cmd = { '/path/to/infill-ls', 'serve' } }), or set $INFILL_LS",
    })
    return
  end
  health.ok("server: " .. table.concat(cmd, " "))
  local out = vim.system({ cmd[1], "--version" }, { text = true }):wait(20000)
  if out.code == 0 then
    health.ok("version: " .. vim.trim(out.stdout or ""))
  else
    health.error("`" .. cmd[1] .. " --version` failed: " .. vim.trim((out.stderr or "") .. (out.stdout or "")))
  end
  local doctor = vim.system({ cmd[1], "doctor", "--json" }, { text = true }):wait(60000)
  local ok, report = pcall(vim.json.decode, doctor.stdout or "")
  if doctor.code == 0 and ok and type(report) == "table" then
    local model = report.model or {}
    if type(model) == "table" and (model.exists or model.present or model.ok) then
      health.ok("model: " .. tostring(model.path or model.name or vim.inspect(model)))
    else
      health.warn("model: " .. vim.inspect(model), { "Run `infill-ls models pull`" })
    end
  else
    health.warn("`infill-ls doctor --json` gave no report (exit " .. tostring(doctor.code) .. ")")
  end

  health.start("infill: client")
  local client = infill.client()
  if client then
    health.ok(("running (id %d), model %s%s"):format(client.id, infill.state.model,
      infill.state.detail ~= "" and (": " .. infill.state.detail) or ""))
  else
    health.info("not attached yet: open a file of a configured filetype")
  end
end

return M
