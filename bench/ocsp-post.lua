-- wrk: POST the same DER OCSPRequest (file $OCSP_REQ) on every request, as
-- application/ocsp-request (RFC 6960 A.1). Without a nonce, devid answers from its cache of
-- pre-signed responses.
--   OCSP_REQ=req.der wrk -t2 -c32 -d10s --latency -s bench/ocsp-post.lua http://HOST/ocsp
local path = assert(os.getenv("OCSP_REQ"), "set OCSP_REQ to a DER OCSPRequest file")
local f = assert(io.open(path, "rb"))
local der = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = der
wrk.headers["Content-Type"] = "application/ocsp-request"
