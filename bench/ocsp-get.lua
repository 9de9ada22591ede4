-- wrk: GET <url>/<percent-encoded base64 of the DER OCSPRequest in $OCSP_REQ> (RFC 6960
-- A.1, RFC 5019 §5), the same request every time.
--   OCSP_REQ=req.der wrk -t2 -c32 -d10s --latency -s bench/ocsp-get.lua http://HOST/ocsp
local path = assert(os.getenv("OCSP_REQ"), "set OCSP_REQ to a DER OCSPRequest file")
local f = assert(io.open(path, "rb"))
local der = f:read("*a")
f:close()

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local b1, b2, b3 = s:byte(i, i + 2)
    local n = b1 * 65536 + (b2 or 0) * 256 + (b3 or 0)
    local q = {}
    for k = 1, 4 do
      local shift = 2 ^ (6 * (4 - k))
      local idx = math.floor(n / shift) % 64
      q[k] = ALPHABET:sub(idx + 1, idx + 1)
    end
    if b2 == nil then q[3] = "=" end
    if b3 == nil then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

-- '+', '/' and '=' are percent-encoded so that the request is one path segment.
local encoded = base64(der):gsub("[+/=]", function(c)
  return string.format("%%%02X", c:byte())
end)

local base = wrk.path
if base:sub(-1) ~= "/" then base = base .. "/" end
wrk.method = "GET"
wrk.path = base .. encoded
