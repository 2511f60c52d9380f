-- infill-ls for Neovim: local AI code completion (inline ghost text) from the infill-ls language server.
--
--   require("infill").setup({
--     cmd = { "/path/to/infill-ls/.venv/bin/infill-ls" },   -- default: found (see M.find_server)
--     filetypes = { "python", "lua", "javascript" },       -- default: every filetype
--     settings = { model = "default", completion = { time_budget_ms = 1000 } },  -- the server's settings
--   })
--
-- Neovim 0.12+: the built-in vim.lsp.inline_completion shows the ghost text. 0.10/0.11: this plugin's own
-- ghost text (extmarks, lua/infill/ghost.lua). Keymaps (insert mode): <Tab> accept all, <C-l> accept a
-- line, <C-Right> accept a word, <M-]>/<M-[> next/previous candidate (0.12). Commands: :InfillExplain,
-- :InfillAction {name} [instruction], :InfillStatus, :InfillToggle, :InfillLog. Health: :checkhealth infill.

local M = {}

M.name = "infill"
M.state = { model = "idle", detail = "", last_latency_ms = nil }

---@class infill.Config
M.defaults = {
  cmd = nil, ---@type string[]|nil  nil: M.find_server()
  filetypes = nil, ---@type string[]|nil  nil: every filetype
  root_markers = { ".git", "pyproject.toml", "package.json", "Cargo.toml", "go.mod" },
  settings = { load = "startup" }, -- sent as initializationOptions and workspace/didChangeConfiguration
  -- "auto": the built-in inline completion on 0.12+, the plugin's ghost text before;
  -- "native" or "ghost" to force one (ghost works on 0.12 too).
  inline = "auto",
  debounce_ms = 150, -- ghost text only (0.12's built-in one debounces on its own)
  keymaps = {
    accept = "<Tab>",
    accept_line = "<C-l>",
    accept_word = "<C-Right>",
    next = "<M-]>",
    prev = "<M-[>",
    dismiss = "<C-]>",
  },
  explanation = "float", -- "float" | "split": where infill/explanation markdown is shown
}

M.config = vim.deepcopy(M.defaults)

local function has(version)
  return vim.fn.has("nvim-" .. version) == 1
end

--- The server executable: $INFILL_LS, ./.venv or ./venv in the cwd, a pipx install, then PATH.
function M.find_server()
  local env = vim.env.INFILL_LS
  if env and env ~= "" then
    return { env, "serve" }
  end
  local candidates = {
    vim.fn.getcwd() .. "/.venv/bin/infill-ls",
    vim.fn.getcwd() .. "/venv/bin/infill-ls",
    (vim.env.PIPX_BIN_DIR or (vim.env.HOME .. "/.local/bin")) .. "/infill-ls",
    (vim.env.PIPX_HOME or (vim.env.HOME .. "/.local/pipx")) .. "/venvs/infill-ls/bin/infill-ls",
  }
  for _, path in ipairs(candidates) do
    if vim.fn.executable(path) == 1 then
      return { path, "serve" }
    end
  end
  return { "infill-ls", "serve" }
end

--- The running infill-ls client for a buffer (or any), or nil.
function M.client(bufnr)
  local clients = vim.lsp.get_clients({ name = M.name, bufnr = bufnr })
  if #clients == 0 and bufnr then
    clients = vim.lsp.get_clients({ name = M.name })
  end
  return clients[1]
end

local function request(client, method, params, handler, bufnr)
  if has("0.11") then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end
M._request = request

local function notify(client, method, params)
  if has("0.11") then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.use_native()
  local mode = M.config.inline
  if mode == "native" then
    return true
  elseif mode == "ghost" then
    return false
  end
  return vim.lsp.inline_completion ~= nil
end

local function show_explanation(params)
  local lines = { "# " .. (params.title or "infill"), "" }
  vim.list_extend(lines, vim.split(params.markdown or "", "\n", { plain = true }))
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].filetype = "markdown"
  vim.bo[buf].bufhidden = "wipe"
  pcall(vim.api.nvim_buf_set_name, buf, "infill://explanation/" .. buf)
  M.last_explanation = { buf = buf, title = params.title, markdown = params.markdown, uri = params.uri }
  if M.config.explanation == "split" or #vim.api.nvim_list_uis() == 0 then
    vim.cmd("botright split")
    vim.api.nvim_win_set_buf(0, buf)
  else
    local width = math.min(100, math.floor(vim.o.columns * 0.8))
    local height = math.min(#lines + 1, math.floor(vim.o.lines * 0.7))
    vim.api.nvim_open_win(buf, true, {
      relative = "editor", width = width, height = height, border = "rounded", style = "minimal",
      row = math.floor((vim.o.lines - height) / 2), col = math.floor((vim.o.columns - width) / 2),
      title = " infill ", title_pos = "center",
    })
    vim.keymap.set("n", "q", "<cmd>close<cr>", { buffer = buf, nowait = true })
  end
  vim.api.nvim_exec_autocmds("User", { pattern = "InfillExplanation", data = params })
end

local handlers = {
  ["infill/modelState"] = function(_, params)
    M.state.model = params.state
    M.state.detail = params.detail or ""
    vim.schedule(function()
      vim.cmd("redrawstatus!")
      vim.api.nvim_exec_autocmds("User", { pattern = "InfillModelState", data = params })
    end)
  end,
  ["infill/explanation"] = function(_, params)
    vim.schedule(function()
      show_explanation(params)
    end)
  end,
}

--- A short status for the statusline: "infill: ready 120ms".
function M.statusline()
  local s = "infill: " .. M.state.model
  if M.state.last_latency_ms then
    s = s .. " " .. M.state.last_latency_ms .. "ms"
  end
  return s
end

local function range_params(bufnr, line1, line2, has_range)
  local client = M.client(bufnr)
  local encoding = client and client.offset_encoding or "utf-16"
  if has_range then
    local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, false)[1] or ""
    return {
      start = { line = line1 - 1, character = 0 },
      ["end"] = { line = line2 - 1, character = vim.str_utfindex(last, encoding) },
    }
  end
  local row = vim.api.nvim_win_get_cursor(0)[1]
  local line = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, false)[1] or ""
  return {
    start = { line = row - 1, character = 0 },
    ["end"] = { line = row - 1, character = vim.str_utfindex(line, encoding) },
  }
end

--- Runs the server's infill.runAction command: [uri, range, actionName, instruction?].
---@param action string
---@param opts? { range?: table, instruction?: string, bufnr?: integer, callback?: fun(err, result) }
function M.run_action(action, opts)
  opts = opts or {}
  local bufnr = opts.bufnr or vim.api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    vim.notify("infill: the server is not running for this buffer", vim.log.levels.WARN)
    return
  end
  local range = opts.range or range_params(bufnr, nil, nil, false)
  local args = { vim.uri_from_bufnr(bufnr), range, action }
  if opts.instruction and opts.instruction ~= "" then
    table.insert(args, opts.instruction)
  end
  request(client, "workspace/executeCommand", { command = "infill.runAction", arguments = args },
    function(err, result)
      if err then
        vim.notify("infill: " .. action .. " failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      end
      if opts.callback then
        opts.callback(err, result)
      end
    end, bufnr)
end

local function send_settings()
  local client = M.client()
  if client then
    notify(client, "workspace/didChangeConfiguration", { settings = { infill = M.config.settings } })
  end
end

local function create_commands()
  local function action_cmd(name, action)
    vim.api.nvim_create_user_command(name, function(o)
      M.run_action(action, { range = range_params(0, o.line1, o.line2, o.range > 0), instruction = o.args })
    end, { range = true, nargs = "*", desc = "infill: " .. action .. " the selection (or the line)" })
  end
  action_cmd("InfillExplain", "explain")
  action_cmd("InfillFix", "fix")
  action_cmd("InfillRefactor", "refactor")
  action_cmd("InfillDocstring", "docstring")
  action_cmd("InfillTests", "tests")
  vim.api.nvim_create_user_command("InfillAction", function(o)
    local action, instruction = o.args:match("^(%S+)%s*(.*)$")
    if not action then
      vim.notify("usage: :InfillAction {name} [instruction]", vim.log.levels.WARN)
      return
    end
    M.run_action(action, { range = range_params(0, o.line1, o.line2, o.range > 0), instruction = instruction })
  end, { range = true, nargs = "+", desc = "infill: run a code action by name" })
  vim.api.nvim_create_user_command("InfillStatus", function()
    local client = M.client()
    if not client then
      vim.notify("infill: not running", vim.log.levels.WARN)
      return
    end
    request(client, "infill/status", {}, function(err, result)
      vim.notify(err and ("infill: " .. vim.inspect(err)) or vim.inspect(result))
    end)
  end, { desc = "infill: show the server status" })
  vim.api.nvim_create_user_command("InfillToggle", function()
    M.config.settings.completion = M.config.settings.completion or {}
    local completion = M.config.settings.completion
    completion.enable = completion.enable == false
    send_settings()
    vim.notify("infill: completions " .. (completion.enable and "on" or "off"))
  end, { desc = "infill: completions on/off" })
  vim.api.nvim_create_user_command("InfillLog", function()
    vim.cmd("tabnew " .. vim.fn.fnameescape(vim.lsp.log.get_filename()))
  end, { desc = "infill: the LSP log" })
end

--- Insert `text` at the cursor as if typed and put the cursor after it.
local function insert_at_cursor(text)
  local win = vim.api.nvim_get_current_win()
  local buf = vim.api.nvim_win_get_buf(win)
  local row, col = unpack(vim.api.nvim_win_get_cursor(win))
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(buf, row - 1, col, row - 1, col, lines)
  local last = lines[#lines]
  vim.api.nvim_win_set_cursor(win, { row + #lines - 1, (#lines == 1 and col or 0) + #last })
end
M._insert_at_cursor = insert_at_cursor

--- The part of a suggestion that "accept a line" / "accept a word" takes.
function M.partial(text, unit)
  if unit == "line" then
    local first, rest = text:match("^([^\n]*)(\n?.*)$")
    if first == "" and rest ~= "" then
      return "\n" .. (rest:sub(2):match("^[^\n]*") or "")
    end
    return first
  end
  -- a word: leading blanks, then one word or one run of punctuation
  return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+") or text
end

local native = {}

function native.text(item)
  local t = item.insert_text
  return type(t) == "string" and t or (t and t.value) or ""
end

function native.accept(unit)
  return vim.lsp.inline_completion.get({
    on_accept = function(item)
      local text = native.text(item)
      -- the range starts at the cursor for infill-ls; drop what is already typed after it
      local cur = vim.api.nvim_win_get_cursor(0)
      if item.range then
        local r = item.range.start
        local line = vim.api.nvim_buf_get_lines(0, r.row, r.row + 1, false)[1] or ""
        local typed = line:sub(r.col + 1, cur[2])
        if text:sub(1, #typed) == typed then
          text = text:sub(#typed + 1)
        end
      end
      if unit ~= "all" then
        text = M.partial(text, unit)
      end
      insert_at_cursor(text)
      vim.api.nvim_exec_autocmds("User", { pattern = "InfillAccepted", data = { text = text, unit = unit } })
    end,
  })
end

local function set_keymaps()
  local km = M.config.keymaps or {}
  local function map(lhs, fn, desc)
    if lhs and lhs ~= "" then
      vim.keymap.set("i", lhs, fn, { expr = true, silent = true, desc = desc })
    end
  end
  local function accepter(unit, fallback)
    return function()
      local ok
      if M.use_native() then
        ok = native.accept(unit)
      else
        ok = require("infill.ghost").accept(unit)
      end
      if ok then
        return ""
      end
      return vim.api.nvim_replace_termcodes(fallback, true, false, true)
    end
  end
  map(km.accept, accepter("all", km.accept or ""), "infill: accept the suggestion")
  map(km.accept_line, accepter("line", km.accept_line or ""), "infill: accept a line")
  map(km.accept_word, accepter("word", km.accept_word or ""), "infill: accept a word")
  map(km.next, function()
    if M.use_native() then
      vim.lsp.inline_completion.select({ count = 1 })
    end
    return ""
  end, "infill: next suggestion")
  map(km.prev, function()
    if M.use_native() then
      vim.lsp.inline_completion.select({ count = -1 })
    end
    return ""
  end, "infill: previous suggestion")
  map(km.dismiss, function()
    if not M.use_native() then
      require("infill.ghost").clear()
    end
    return vim.api.nvim_replace_termcodes(km.dismiss, true, false, true)
  end, "infill: dismiss")
end

local function on_attach(client, bufnr)
  if M.use_native() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  else
    require("infill.ghost").attach(bufnr)
  end
  vim.api.nvim_exec_autocmds("User", { pattern = "InfillAttached", data = { client_id = client.id, bufnr = bufnr } })
end

---@param opts? infill.Config
function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  if not has("0.10") then
    vim.notify("infill: Neovim 0.10 or newer is needed", vim.log.levels.ERROR)
    return
  end
  local cmd = M.config.cmd or M.find_server()
  if type(cmd) == "string" then
    cmd = { cmd, "serve" }
  end
  local lsp_config = {
    cmd = cmd,
    filetypes = M.config.filetypes,
    root_markers = M.config.root_markers,
    init_options = M.config.settings,
    settings = { infill = M.config.settings },
    handlers = handlers,
    on_attach = on_attach,
  }
  if vim.lsp.config and vim.lsp.enable then -- 0.11+
    vim.lsp.config(M.name, lsp_config)
    vim.lsp.enable(M.name)
  else -- 0.10: start the client ourselves
    vim.api.nvim_create_autocmd("FileType", {
      group = vim.api.nvim_create_augroup("infill.start", { clear = true }),
      callback = function(ev)
        if vim.bo[ev.buf].buftype ~= "" then
          return
        end
        if M.config.filetypes and not vim.tbl_contains(M.config.filetypes, vim.bo[ev.buf].filetype) then
          return
        end
        local root = vim.fs.root(ev.buf, M.config.root_markers) or vim.fn.getcwd()
        vim.lsp.start(vim.tbl_extend("force", lsp_config, { name = M.name, root_dir = root }), { bufnr = ev.buf })
      end,
    })
  end
  create_commands()
  set_keymaps()
end

return M
