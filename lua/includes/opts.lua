-- opts: a script's optional arguments, packed in one ARGV as a cjson-encoded table
-- (service/state/calls.py: ScriptSpec.packed). read_opts decodes it and checks every field
-- against `types` (field -> 'string' | 'boolean' | 'whole', a whole number) before the
-- script's first write; a field left out is nil, and the script gives it its default.
-- Returns the table, or nil and the name of the first field that is unknown or mistyped
-- ('opts' when the ARGV is not a JSON object).
local function read_opts(raw, types)
  local decoded, opts = pcall(cjson.decode, raw or '')
  if not decoded or type(opts) ~= 'table' then return nil, 'opts' end
  for name, value in pairs(opts) do
    local want = types[name]
    if type(name) ~= 'string' or want == nil then return nil, 'opts' end
    if want == 'whole' then
      if type(value) ~= 'number' or value % 1 ~= 0 then return nil, name end
    elseif type(value) ~= want then
      return nil, name
    end
  end
  return opts
end
