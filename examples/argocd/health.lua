-- Argo CD health check for modeldeploy.io/ModelDeployment (Lua 5.1, as Argo CD runs it).
--
--   Healthy      Ready=True for the current generation (status.observedGeneration and the
--                Ready condition's observedGeneration both equal metadata.generation).
--   Degraded     Degraded=True (the operator's message: a spec it refuses, no hardware that
--                fits, pods that cannot be scheduled or pulled or keep crashing, a missing
--                permission), phase Failed or Blocked. None of these gets better by waiting:
--                they need a change of the spec, the node pool or the cluster.
--   Progressing  everything else: not yet observed by the operator, the operator has not
--                caught up with a new generation, fetching the model, rolling out.
--
-- "No node can hold the model" (Scheduled=False, reason NoFittingHardware) is Degraded, as
-- the operator says (Degraded=True): it retries only when the node pool changes, so an Argo
-- CD sync waiting on it would otherwise wait until its timeout. A pod that the scheduler
-- cannot place (reason PodUnschedulable) is Degraded for the same reason.
local hs = {}

local function conditions_by_type(status)
  local found = {}
  if status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      if condition.type ~= nil then
        found[condition.type] = condition
      end
    end
  end
  return found
end

local function with_reason(condition, fallback)
  if condition == nil then
    return fallback
  end
  local message = condition.message or fallback
  if condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason .. ": " .. message
  end
  return message
end

-- A condition written for an older generation says nothing about the current spec.
local function current(condition, generation)
  return condition ~= nil
    and (condition.observedGeneration == nil or generation == nil
      or condition.observedGeneration == generation)
end

local generation = obj.metadata.generation
local status = obj.status

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the modeldeploy operator to observe the ModelDeployment"
  return hs
end

local conditions = conditions_by_type(status)
local ready = conditions["Ready"]
local degraded = conditions["Degraded"]

if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
    .. " (it has seen " .. status.observedGeneration .. ")"
  return hs
end

if degraded ~= nil and degraded.status == "True" and current(degraded, generation) then
  hs.status = "Degraded"
  hs.message = with_reason(degraded, "The ModelDeployment is degraded")
  return hs
end

if status.phase == "Failed" or status.phase == "Blocked" then
  hs.status = "Degraded"
  hs.message = with_reason(ready, "The ModelDeployment is " .. status.phase)
  return hs
end

if ready ~= nil and ready.status == "True" and current(ready, generation) then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
if status.phase == "Fetching" then
  hs.message = with_reason(conditions["Progressing"] or ready, "Fetching the model")
else
  hs.message = with_reason(conditions["Progressing"] or ready, "Rolling out")
end
return hs
