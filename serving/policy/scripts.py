"""Redis Lua scripts of the policy layer: one atomic round trip to admit a request, one to settle it.

Admission checks every limit of the key and its tenant together (all-or-nothing: a request denied by one limit
consumes none), so rate-limit libraries that check one limit per call do not fit. The clock is Redis's `TIME`, so
every gateway replica sees the same buckets. The spec is JSON (`cjson`), built by `serving.policy.limits`.
"""

ADMIT = r"""
local spec = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {ok = true, rl = {}, anomalous = false, throttled = false}

local function deny(status, code, what, retry)
  out.ok = false; out.status = status; out.code = code; out.what = what; out.retry_after = retry
  return cjson.encode(out)
end

-- 1. the API key is still active (revocation is seen at once by every replica)
if spec.active then
  local rec = redis.call('HMGET', spec.active, 'tenant', 'revoked')
  if not rec[1] then return deny(401, 'invalid_api_key', 'unknown', 0) end
  if rec[2] then return deny(401, 'invalid_api_key', 'revoked', 0) end
end

-- 2. kill switches (global, tenant, route, key)
if spec.kill and #spec.kill > 0 then
  local vals = redis.call('HMGET', spec.kill_key, unpack(spec.kill))
  for i, v in ipairs(vals) do
    if v then return deny(403, 'kill_switch', spec.kill[i], 0) end
  end
end

-- 3. calendar quotas and budgets: used >= limit denies (they are charged when the answer is known)
for _, c in ipairs(spec.caps or {}) do
  local used = tonumber(redis.call('GET', c.key) or '0')
  if used >= c.limit then return deny(429, c.code, c.name, c.reset) end
end

-- 4. token buckets (requests and tokens per minute), checked before any is consumed
local levels = {}
for i, b in ipairs(spec.buckets or {}) do
  local rate = b.limit / 60.0
  local h = redis.call('HMGET', b.key, 't', 'ts')
  local level = b.limit
  if h[1] and h[2] then level = math.min(b.limit, tonumber(h[1]) + (now - tonumber(h[2])) * rate) end
  levels[i] = level
  if b.cost > b.limit then return deny(429, 'request_too_large', b.name, 0) end
  if level < b.cost then return deny(429, 'rate_limit_exceeded', b.name, (b.cost - level) / rate) end
end

-- 5. runaway protection: this window's requests against the tenant's moving baseline (EWMA of past windows)
local an = spec.anomaly
local an_state
if an then
  local s = redis.call('HMGET', an.key, 'ewma', 'n', 'cur', 'cnt', 'thr_until', 'thr_limit')
  local ewma, n = tonumber(s[1] or '0'), tonumber(s[2] or '0')
  local cur, cnt = tonumber(s[3] or tostring(an.widx)), tonumber(s[4] or '0')
  local thr_until, thr_limit = tonumber(s[5] or '0'), tonumber(s[6] or '0')
  local throttled = thr_until > now
  if an.widx > cur then
    if not throttled then  -- a throttled tenant's windows do not teach the baseline
      local threshold = math.max(an.min, an.factor * ewma)
      if n >= an.warmup and cnt > threshold then cnt = threshold end
      if n == 0 then ewma = cnt else ewma = an.alpha * cnt + (1 - an.alpha) * ewma end
      local idle = math.min(an.widx - cur - 1, 10000)
      if idle > 0 then ewma = ewma * math.pow(1 - an.alpha, idle) end
      n = n + 1 + idle
    end
    cur, cnt = an.widx, 0
  end
  local threshold = math.max(an.min, an.factor * ewma)
  if throttled then threshold = math.min(threshold, thr_limit) end
  if (n >= an.warmup or throttled) and cnt + 1 > threshold then
    out.anomalous = true
    out.baseline = ewma
    out.threshold = threshold
    if an.throttle then
      if not throttled then thr_limit = threshold end
      redis.call('HSET', an.key, 'ewma', ewma, 'n', n, 'cur', cur, 'cnt', cnt,
                 'thr_until', now + an.throttle_s, 'thr_limit', thr_limit)
      redis.call('EXPIRE', an.key, an.ttl)
      out.throttled = true
      return deny(429, 'tenant_throttled', 'anomaly', an.window_end - now)
    end
  end
  an_state = {ewma, n, cur, cnt + 1, thr_until, thr_limit}
end

-- every check passed: consume
for i, b in ipairs(spec.buckets or {}) do
  local rate = b.limit / 60.0
  local level = levels[i] - b.cost
  redis.call('HSET', b.key, 't', level, 'ts', now)
  redis.call('EXPIRE', b.key, math.ceil((b.limit - level) / rate) + 1)
  out.rl[#out.rl + 1] = {b.name, b.limit, math.floor(level), (b.limit - level) / rate}
end
if an_state then
  redis.call('HSET', an.key, 'ewma', an_state[1], 'n', an_state[2], 'cur', an_state[3], 'cnt', an_state[4],
             'thr_until', an_state[5], 'thr_limit', an_state[6])
  redis.call('EXPIRE', an.key, an.ttl)
end
return cjson.encode(out)
"""

SETTLE = r"""
local spec = cjson.decode(ARGV[1])
local out = {}
-- token buckets: the estimate reserved at admission corrected by the actual count (a refund when negative)
for _, b in ipairs(spec.buckets or {}) do
  if b.delta ~= 0 and redis.call('HEXISTS', b.key, 'ts') == 1 then
    redis.call('HINCRBYFLOAT', b.key, 't', -b.delta)
  end
end
-- calendar counters: daily tokens, USD per hour / day; returns the new totals
for i, c in ipairs(spec.counters or {}) do
  local total
  if c.float then
    total = tonumber(redis.call('INCRBYFLOAT', c.key, c.amount))
  else
    total = redis.call('INCRBY', c.key, c.amount)
  end
  if redis.call('TTL', c.key) < 0 then redis.call('EXPIRE', c.key, c.ttl) end
  out[i] = tostring(total)
end
return out
"""
