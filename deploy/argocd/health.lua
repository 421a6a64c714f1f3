-- Argo CD health check for datamix.io/DataMixtureExperiment (Argo CD runs it under Lua 5.1).
-- Install: argocd-cm key resource.customizations.health.datamix.io_DataMixtureExperiment
-- (docs/install.md). Tested by tests/ship/test_health_lua.py against status documents.
--
-- Only status the operator computed from the current spec counts: a condition whose
-- observedGeneration is older than metadata.generation describes a spec that no longer exists
-- (an edit of run-defining fields starts a new run), so it is ignored and the experiment is
-- Progressing until the operator catches up.
local hs = { status = "Progressing", message = "Waiting for the operator to observe the experiment" }

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

-- True when `observed` (a number or nil) reflects the current generation.
local function current(observed)
  if generation == nil or observed == nil then
    return true
  end
  return observed >= generation
end

local function describe(cond, fallback)
  local text = fallback
  if cond.message ~= nil and cond.message ~= "" then
    text = cond.message
  end
  if cond.reason ~= nil and cond.reason ~= "" then
    return cond.reason .. ": " .. text
  end
  return text
end

local status = obj.status
if status == nil then
  return hs
end
if not current(status.observedGeneration) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status reflects " .. tostring(status.observedGeneration) .. ")"
  return hs
end

-- Conditions that are True and computed from the current generation, by type.
local active = {}
if status.conditions ~= nil then
  for _, cond in ipairs(status.conditions) do
    if cond.type ~= nil and cond.status == "True" and current(cond.observedGeneration) then
      active[cond.type] = cond
    end
  end
end
local phase = status.phase

if active["Stalled"] ~= nil then
  hs.status = "Degraded"
  hs.message = describe(active["Stalled"], "The operator cannot make progress")
  return hs
end
-- Like a Deployment's progressDeadlineSeconds: a run that completes no training step within
-- spec.progressDeadlineSeconds is Degraded (it keeps running; the condition clears on progress).
local progressing = nil
if status.conditions ~= nil then
  for _, cond in ipairs(status.conditions) do
    if cond.type == "Progressing" and cond.status == "False" and cond.reason == "ProgressDeadlineExceeded"
        and current(cond.observedGeneration) then
      progressing = cond
    end
  end
end
if progressing ~= nil and phase == "Running" then
  hs.status = "Degraded"
  hs.message = describe(progressing, "No training step completed within the progress deadline")
  return hs
end
if active["Failed"] ~= nil or phase == "Failed" then
  hs.status = "Degraded"
  if active["Failed"] ~= nil then
    hs.message = describe(active["Failed"], "The run failed")
  else
    hs.message = "The run failed"
  end
  return hs
end
if active["Suspended"] ~= nil or phase == "Suspended" then
  hs.status = "Suspended"
  if active["Suspended"] ~= nil then
    hs.message = describe(active["Suspended"], "The run is suspended")
  else
    hs.message = "The run is suspended"
  end
  return hs
end
if active["Succeeded"] ~= nil or phase == "Succeeded" then
  hs.status = "Healthy"
  local text = "The run succeeded"
  if active["Succeeded"] ~= nil then
    text = describe(active["Succeeded"], text)
  end
  if status.loss ~= nil then
    text = text .. " (loss " .. tostring(status.loss) .. ")"
  end
  hs.message = text
  return hs
end

-- Everything else is work in progress: Pending, Created, Running, Restarting.
local text = "Waiting for the run to start"
if active["Restarting"] ~= nil then
  text = describe(active["Restarting"], "The run is restarting")
elseif active["Running"] ~= nil or phase == "Running" then
  text = "The run is training"
  if active["Running"] ~= nil then
    text = describe(active["Running"], text)
  end
elseif active["Created"] ~= nil then
  text = describe(active["Created"], "The run's job was created")
elseif phase ~= nil then
  text = "Phase " .. tostring(phase)
end
-- Live progress (read by the operator from the trainer while the run trains).
if status.progress ~= nil and status.progress.percent ~= nil then
  local detail = tostring(status.progress.percent) .. "% of samples"
  if status.loss ~= nil then
    detail = detail .. ", loss " .. tostring(status.loss)
  end
  if status.progress.estimatedCompletionTime ~= nil then
    detail = detail .. ", done about " .. tostring(status.progress.estimatedCompletionTime)
  end
  text = text .. " (" .. detail .. ")"
end
hs.message = text
return hs
