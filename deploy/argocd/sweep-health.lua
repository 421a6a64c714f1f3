-- Argo CD health check for datamix.io/DataMixtureSweep (Argo CD runs it under Lua 5.1).
-- Install: argocd-cm key resource.customizations.health.datamix.io_DataMixtureSweep
-- (deploy/argocd/argocd-cm.yaml). Tested by tests/ship/test_sweep_health_lua.py against status
-- documents, hand-written and captured from the real operator.
--
-- A status older than metadata.generation (e.g. just after parallelism or final was edited) is
-- Progressing until the operator catches up. Phases: Pending, Running, Fitting -> Progressing;
-- Succeeded -> Healthy; Failed or a True Stalled condition -> Degraded; Suspended -> Suspended.
local hs = { status = "Progressing", message = "Waiting for the operator to observe the sweep" }

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

local status = obj.status
if status == nil then
  return hs
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status reflects " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local function detail(fallback)
  local text = fallback
  if status.message ~= nil and status.message ~= "" then
    text = status.message
  end
  if status.reason ~= nil and status.reason ~= "" then
    text = status.reason .. ": " .. text
  end
  if status.trials ~= nil and status.trials.done ~= nil then
    text = text .. " (trials " .. tostring(status.trials.done) .. ")"
  end
  return text
end

if status.conditions ~= nil then
  for _, cond in ipairs(status.conditions) do
    local current = generation == nil or cond.observedGeneration == nil or cond.observedGeneration >= generation
    if cond.type == "Stalled" and cond.status == "True" and current then
      hs.status = "Degraded"
      local text = cond.message
      if text == nil or text == "" then
        text = "The operator cannot make progress"
      end
      if cond.reason ~= nil and cond.reason ~= "" then
        text = cond.reason .. ": " .. text
      end
      hs.message = text
      return hs
    end
  end
end

local phase = status.phase
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = detail("The sweep failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = detail("The sweep is suspended")
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = detail("The sweep proposed a mixture")
elseif phase == "Fitting" then
  hs.message = detail("Fitting the regression")
elseif phase == "Running" then
  hs.message = detail("Trials are running")
else
  hs.message = detail("Waiting for the first trials")
end
return hs
