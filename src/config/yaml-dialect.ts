/**
 * The YAML dialect of upstream's config decoder (a YAML 1.1 reader): `yes`/`on`/`off` are booleans
 * and `010` is octal, but there are no base-60 numbers or timestamps (`10:20` and `2024-01-01` stay
 * strings). kproxy reads and writes config files in this dialect so that a written file reads back
 * the same in kproxy and in kube-proxy (a string "yes" is written quoted).
 */
import type { Tags } from "yaml";

function goYamlTags(tags: Tags): Tags {
  return tags.filter((tag) => typeof tag === "string" || (tag.format !== "TIME" && tag.tag !== "tag:yaml.org,2002:timestamp"));
}

export const GO_YAML_OPTIONS = { version: "1.1", customTags: goYamlTags } as const;
