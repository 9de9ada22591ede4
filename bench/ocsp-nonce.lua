-- wrk: POST OCSPRequests that each carry a fresh random 16-byte nonce (RFC 6960 §4.4.1,
-- RFC 9654), so that no response can come from a cache: every one is signed live.
--
-- $OCSP_NONCE_REQ is a template request made by `openssl ocsp ... -reqout FILE` with its
-- default nonce. The script finds the nonce extension (id-pkix-ocsp-nonce,
-- 1.3.6.1.5.5.7.48.1.2), whose extnValue is OCTET STRING { OCTET STRING (16 octets) }, and
-- replaces those 16 octets for every request. Lengths do not change, so the rest of the
-- DER stays valid.
--
-- $OCSP_DUMP (optional): write the first two requests of each thread to
-- $OCSP_DUMP-<thread>-<n>.der, so that a test can check them.
--   OCSP_NONCE_REQ=tmpl.der wrk -t2 -c32 -d10s --latency -s bench/ocsp-nonce.lua http://HOST/ocsp
local path = assert(os.getenv("OCSP_NONCE_REQ"), "set OCSP_NONCE_REQ to a DER OCSPRequest with a nonce")
local f = assert(io.open(path, "rb"))
local template = f:read("*a")
f:close()

local NONCE_OID = string.char(0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02)
local NONCE_LEN = 16
local oid_at = assert(template:find(NONCE_OID, 1, true), "no nonce extension in the template")
-- extnValue: 04 12, then the nonce itself: 04 10 <16 octets>.
local wrap = string.char(0x04, NONCE_LEN + 2, 0x04, NONCE_LEN)
local wrap_at = assert(template:find(wrap, oid_at + #NONCE_OID, true), "nonce is not a 16-octet OCTET STRING")
assert(wrap_at == oid_at + #NONCE_OID, "unexpected bytes between the nonce OID and its value")
local first = wrap_at + #wrap                       -- first nonce octet (1-based)
local prefix = template:sub(1, first - 1)
local suffix = template:sub(first + NONCE_LEN)
assert(#prefix + NONCE_LEN + #suffix == #template)

local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
end

local dump = os.getenv("OCSP_DUMP")
local dumped = 0
local random, char = math.random, string.char

function init(args)
  -- A different sequence in every thread (thread_id) and every run (time, address).
  local seed = os.time() * 1000 + (thread_id or 0) * 7919 + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  math.randomseed(seed)
  for _ = 1, 10 do random() end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/ocsp-request"
end

function request()
  local nonce = char(random(0, 255), random(0, 255), random(0, 255), random(0, 255),
                     random(0, 255), random(0, 255), random(0, 255), random(0, 255),
                     random(0, 255), random(0, 255), random(0, 255), random(0, 255),
                     random(0, 255), random(0, 255), random(0, 255), random(0, 255))
  local body = prefix .. nonce .. suffix
  if dump and dumped < 2 then
    dumped = dumped + 1
    local out = assert(io.open(string.format("%s-%d-%d.der", dump, thread_id or 0, dumped), "wb"))
    out:write(body)
    out:close()
  end
  return wrk.format(nil, nil, nil, body)
end
