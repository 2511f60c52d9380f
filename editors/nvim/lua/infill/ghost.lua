-- Ghost text for Neovim 0.10/0.11 (no vim.lsp.inline_completion): requests textDocument/inlineCompletion
-- after typing pauses in insert mode and shows the first item with extmarks (inline virtual text for the
-- first line, virtual lines for the rest). Also usable on 0.12 with setup({ inline = "ghost" }).

local M = {}

local ns = vim.api.nvim_create_namespace("infill.ghost")
local attached = {} ---@type table<integer, boolean>
local timer = nil ---@type uv.uv_timer_t|nil

---@class infill.ghost.Current
---@field bufnr integer
---@field row integer 0-based
---@field col integer byte column of the cursor when requested
---@field changedtick integer
---@field text string

M.current = nil ---@type infill.ghost.Current|nil
local seq = 0

function M.clear(bufnr)
  if bufnr then
    vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  elseif M.current and vim.api.nvim_buf_is_valid(M.current.bufnr) then
    vim.api.nvim_buf_clear_namespace(M.current.bufnr, ns, 0, -1)
  end
  M.current = nil
end

local function show(cur)
  vim.api.nvim_buf_clear_namespace(cur.bufnr, ns, 0, -1)
  local lines = vim.split(cur.text, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    table.insert(virt_lines, { { lines[i], "Comment" } })
  end
  vim.api.nvim_buf_set_extmark(cur.bufnr, ns, cur.row, cur.col, {
    virt_text = { { lines[1], "Comment" } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
  vim.api.nvim_exec_autocmds("User", { pattern = "InfillGhost", data = { text = cur.text } })
end

function M.request(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local infill = require("infill")
  local client = infill.client(bufnr)
  if not client or not vim.api.nvim_get_mode().mode:match("^i") then
    return
  end
  seq = seq + 1
  local my = seq
  local win = vim.api.nvim_get_current_win()
  local row, col = unpack(vim.api.nvim_win_get_cursor(win))
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = 2 } -- Automatic
  local started = vim.uv.hrtime()
  infill._request(client, "textDocument/inlineCompletion", params, function(err, result)
    if err or my ~= seq or not vim.api.nvim_buf_is_valid(bufnr) then
      return
    end
    infill.state.last_latency_ms = math.floor((vim.uv.hrtime() - started) / 1e6)
    if vim.api.nvim_buf_get_changedtick(bufnr) ~= tick or not vim.api.nvim_get_mode().mode:match("^i") then
      return
    end
    local items = result and (result.items or result) or {}
    local item = items[1]
    local text = item and (type(item.insertText) == "string" and item.insertText or (item.insertText or {}).value)
    if not text or text == "" then
      M.clear(bufnr)
      return
    end
    M.current = { bufnr = bufnr, row = row - 1, col = col, changedtick = tick, text = text }
    show(M.current)
  end, bufnr)
end

local function schedule(bufnr)
  if timer then
    timer:stop()
    timer:close()
    timer = nil
  end
  timer = vim.defer_fn(function()
    timer = nil
    M.request(bufnr)
  end, require("infill").config.debounce_ms or 150)
end

--- Accept the shown suggestion (all, a line, or a word). Returns false when there is none.
function M.accept(unit)
  local cur = M.current
  if not cur or cur.bufnr ~= vim.api.nvim_get_current_buf() then
    return false
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  if row - 1 ~= cur.row or col ~= cur.col or vim.api.nvim_buf_get_changedtick(cur.bufnr) ~= cur.changedtick then
    M.clear()
    return false
  end
  local infill = require("infill")
  local text = unit == "all" and cur.text or infill.partial(cur.text, unit)
  M.clear()
  vim.schedule(function()
    infill._insert_at_cursor(text)
    vim.api.nvim_exec_autocmds("User", { pattern = "InfillAccepted", data = { text = text, unit = unit } })
  end)
  return true
end

function M.attach(bufnr)
  if attached[bufnr] then
    return
  end
  attached[bufnr] = true
  local group = vim.api.nvim_create_augroup("infill.ghost." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "InsertEnter", "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function(ev)
      local cur = M.current
      if cur and ev.event == "CursorMovedI" then
        local row, col = unpack(vim.api.nvim_win_get_cursor(0))
        if row - 1 == cur.row and col == cur.col then
          return -- the cursor is where the suggestion is: keep it
        end
      end
      M.clear(bufnr)
      schedule(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      seq = seq + 1
      M.clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("BufWipeout", {
    group = group,
    buffer = bufnr,
    callback = function()
      attached[bufnr] = nil
      pcall(vim.api.nvim_del_augroup_by_id, group)
    end,
  })
end

return M
