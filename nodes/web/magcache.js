// MagCache: workflows saved before the node had speed/schedule/reuse/cfg_cache/settings
// stored its seven widget values in the order
//   curve, threshold, max_consecutive_skips, retention_ratio, start, end, cache_device
// (-1 meaning "the curve's recommended value"). The page fills widgets by position, so
// such a workflow is moved to the current order before the node reads it. It keeps its
// meaning: the paper's rule ("MagCache rule"), the curve's settings where all three were
// -1, else "custom" with each number as saved (a -1 left there still means the curve's).
import { app } from "../../scripts/app.js";

const OLD_LENGTH = 7;
const RECOMMENDED = -1;

function migrate(values, defaults) {
  const [curve, threshold, k, retention, start, end, cacheDevice] = values;
  const allRecommended = [threshold, k, retention].every((v) => v === RECOMMENDED);
  return [
    defaults.speed,
    "MagCache rule",
    "plain",
    false,
    curve,
    allRecommended ? "recommended by the curve" : "custom",
    allRecommended ? defaults.threshold : threshold,
    allRecommended ? defaults.max_consecutive_skips : k,
    allRecommended ? defaults.retention_ratio : retention,
    start,
    end,
    cacheDevice,
  ];
}

function isOldLayout(values) {
  return (
    Array.isArray(values) &&
    values.length === OLD_LENGTH &&
    typeof values[0] === "string" &&
    typeof values[1] === "number" &&
    typeof values[6] === "string"
  );
}

app.registerExtension({
  name: "comfyui-magcache.widget-migration",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "MagCacheApply") return;
    const inputs = { ...(nodeData.input?.required ?? {}), ...(nodeData.input?.optional ?? {}) };
    const defaultOf = (name) => inputs[name]?.[1]?.default;
    const defaults = {
      speed: defaultOf("speed"),
      threshold: defaultOf("threshold"),
      max_consecutive_skips: defaultOf("max_consecutive_skips"),
      retention_ratio: defaultOf("retention_ratio"),
    };
    const configure = nodeType.prototype.configure;
    nodeType.prototype.configure = function (info) {
      if (info && isOldLayout(info.widgets_values)) {
        info.widgets_values = migrate(info.widgets_values, defaults);
      }
      return configure.apply(this, arguments);
    };
  },
});
