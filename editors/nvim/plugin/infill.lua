-- infill-ls: nothing happens until require("infill").setup({...}) is called.
if vim.g.loaded_infill then
  return
end
vim.g.loaded_infill = true
