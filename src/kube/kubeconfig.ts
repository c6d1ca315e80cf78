/**
 * Where the API server is and how to prove who we are: a kubeconfig file (current context), a
 * `--master` URL override, or the in-cluster service account. The result is a RestConfig holding the
 * PEM material itself, so the HTTP client never touches files except through a TokenSource.
 */
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import type { Clock } from "../system/clock.ts";
import { realClock } from "../system/clock.ts";
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { HostEnv, HostFiles } from "./host.ts";
import { realHostEnv, realHostFiles } from "./host.ts";
import { FileTokenSource, staticToken, type TokenSource } from "./token.ts";

export class KubeconfigError extends Error {
  override readonly name = "KubeconfigError";
}

export interface TlsSettings {
  /** PEM bundle of trusted CAs; undefined means the system roots. */
  readonly ca?: string | undefined;
  /** Client certificate and key (PEM). */
  readonly cert?: string | undefined;
  readonly key?: string | undefined;
  readonly insecureSkipVerify: boolean;
  /** Name the server certificate is checked against (and SNI) instead of the URL host. */
  readonly serverName?: string | undefined;
}

export type Credentials =
  | { readonly kind: "none" }
  | { readonly kind: "token"; readonly token: TokenSource }
  | { readonly kind: "basic"; readonly username: string; readonly password: string };

export interface RestConfig {
  /** Base URL, without a trailing slash (a path prefix is kept). */
  readonly server: string;
  readonly tls: TlsSettings;
  readonly auth: Credentials;
  /** Where this came from, for log lines ("kubeconfig /etc/k.conf context c", "in-cluster", ...). */
  readonly origin: string;
  /** The context's or the service account's namespace, when known. */
  readonly namespace?: string | undefined;
}

const optionalString = z.string().nullish();

const clusterSchema = z.object({
  server: optionalString,
  "certificate-authority": optionalString,
  "certificate-authority-data": optionalString,
  "insecure-skip-tls-verify": z.boolean().nullish(),
  "tls-server-name": optionalString,
  "proxy-url": optionalString,
});

const userSchema = z.object({
  "client-certificate": optionalString,
  "client-certificate-data": optionalString,
  "client-key": optionalString,
  "client-key-data": optionalString,
  token: optionalString,
  tokenFile: optionalString,
  username: optionalString,
  password: optionalString,
  exec: z.unknown().optional(),
  "auth-provider": z.unknown().optional(),
  as: optionalString,
  "as-uid": optionalString,
  "as-groups": z.unknown().optional(),
  "as-user-extra": z.unknown().optional(),
});

const contextSchema = z.object({
  cluster: optionalString,
  user: optionalString,
  namespace: optionalString,
});

const listOf = <T extends z.ZodType>(entry: T) =>
  z
    .array(entry)
    .nullish()
    .transform((list): z.infer<T>[] => list ?? []);

export const kubeconfigSchema = z.object({
  apiVersion: optionalString,
  kind: optionalString,
  "current-context": optionalString,
  clusters: listOf(z.object({ name: z.string(), cluster: clusterSchema.nullish() })),
  users: listOf(z.object({ name: z.string(), user: userSchema.nullish() })),
  contexts: listOf(z.object({ name: z.string(), context: contextSchema.nullish() })),
});

export type Kubeconfig = z.infer<typeof kubeconfigSchema>;
export type KubeconfigCluster = z.infer<typeof clusterSchema>;
export type KubeconfigUser = z.infer<typeof userSchema>;

/** Parses kubeconfig text (YAML or JSON) and checks its shape. */
export function parseKubeconfig(text: string, origin = "kubeconfig"): Kubeconfig {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new KubeconfigError(`${origin}: not valid YAML: ${(err as Error).message}`);
  }
  const parsed = kubeconfigSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue ? issue.path.join(".") : "";
    throw new KubeconfigError(`${origin}: invalid kubeconfig at ${where || "top level"}: ${issue?.message ?? "unknown problem"}`);
  }
  return parsed.data;
}

export interface LoadContext {
  readonly files?: HostFiles;
  readonly env?: HostEnv;
  readonly clock?: Clock;
  readonly logger?: Logger;
  /** How often a token file is re-read (bound service-account tokens rotate). Default one minute. */
  readonly tokenRefreshMs?: number;
}

export interface InClusterPaths {
  readonly token: string;
  readonly ca: string;
  readonly namespace: string;
}

export const defaultInClusterPaths: InClusterPaths = {
  token: "/var/run/secrets/kubernetes.io/serviceaccount/token",
  ca: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
  namespace: "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
};

export const defaultTokenRefreshMs = 60_000;

export interface LoadOptions extends LoadContext {
  /** `--kubeconfig` / clientConnection.kubeconfig; empty means none. */
  readonly kubeconfigPath?: string | undefined;
  /** `--master`: overrides the cluster's server. */
  readonly masterUrl?: string | undefined;
  readonly inClusterPaths?: InClusterPaths;
}

/**
 * Resolves credentials the way kube-proxy does: with neither a kubeconfig nor a master URL the
 * in-cluster service account is used; otherwise the kubeconfig (if any) with the master URL
 * replacing its server.
 */
export async function loadRestConfig(options: LoadOptions): Promise<RestConfig> {
  const path = options.kubeconfigPath ?? "";
  const master = options.masterUrl ?? "";
  if (path === "" && master === "") return inClusterConfig(options);
  if (path === "") {
    return {
      server: checkServerUrl(master, "--master"),
      tls: { insecureSkipVerify: false },
      auth: { kind: "none" },
      origin: `master ${master}`,
    };
  }
  const files = options.files ?? realHostFiles;
  let text: string;
  try {
    text = await files.readText(path);
  } catch (err) {
    throw new KubeconfigError(`cannot read kubeconfig ${path}: ${(err as Error).message}`);
  }
  const config = parseKubeconfig(text, `kubeconfig ${path}`);
  return restConfigFromKubeconfig(config, { ...options, path, masterUrl: master });
}

export interface FromKubeconfigOptions extends LoadContext {
  /** The kubeconfig's own path: relative file references resolve against its directory. */
  readonly path: string;
  readonly masterUrl?: string | undefined;
}

export async function restConfigFromKubeconfig(config: Kubeconfig, options: FromKubeconfigOptions): Promise<RestConfig> {
  const files = options.files ?? realHostFiles;
  const origin = `kubeconfig ${options.path}`;
  const baseDir = dirname(options.path);
  const master = options.masterUrl ?? "";
  const fail = (msg: string): never => {
    throw new KubeconfigError(`${origin}: ${msg}`);
  };

  const contextName = config["current-context"] ?? "";
  let cluster: KubeconfigCluster = {};
  let user: KubeconfigUser = {};
  let namespace: string | undefined;
  let where = origin;
  if (contextName === "") {
    // Like client-go: with no context, only a master override can say where the server is.
    if (master === "") fail("no current-context is set (and no --master was given)");
  } else {
    const ctx = config.contexts.find((c) => c.name === contextName);
    if (!ctx) return fail(`current-context "${contextName}" names no context`);
    const c = ctx.context ?? {};
    where = `${origin} context ${contextName}`;
    namespace = c.namespace ?? undefined;
    if (c.cluster) {
      const found = config.clusters.find((x) => x.name === c.cluster);
      if (!found) return fail(`context "${contextName}" names cluster "${c.cluster}", which is not defined`);
      cluster = found.cluster ?? {};
    }
    if (c.user) {
      const found = config.users.find((x) => x.name === c.user);
      if (!found) return fail(`context "${contextName}" names user "${c.user}", which is not defined`);
      user = found.user ?? {};
    }
  }

  rejectUnsupported(user, fail);
  if (cluster["proxy-url"]) fail(`cluster proxy-url is not supported (kproxy connects to the server directly)`);

  const serverRaw = master !== "" ? master : (cluster.server ?? "");
  if (serverRaw === "") fail(`cluster has no server (set it in the kubeconfig or pass --master)`);
  const server = checkServerUrl(serverRaw, master !== "" ? "--master" : `${origin} server`);

  const readRef = async (label: string, data: string | null | undefined, file: string | null | undefined): Promise<string | undefined> => {
    if (data) {
      const decoded = Buffer.from(data, "base64").toString("utf8");
      if (decoded.trim() === "") fail(`${label}-data is not valid base64 PEM`);
      return decoded;
    }
    if (file) {
      const full = isAbsolute(file) ? file : resolve(baseDir, file);
      try {
        return await files.readText(full);
      } catch (err) {
        return fail(`cannot read ${label} ${full}: ${(err as Error).message}`);
      }
    }
    return undefined;
  };

  const insecure = cluster["insecure-skip-tls-verify"] ?? false;
  const ca = await readRef("certificate-authority", cluster["certificate-authority-data"], cluster["certificate-authority"]);
  if (insecure && ca !== undefined) fail("insecure-skip-tls-verify cannot be combined with a certificate authority");
  const cert = await readRef("client-certificate", user["client-certificate-data"], user["client-certificate"]);
  const key = await readRef("client-key", user["client-key-data"], user["client-key"]);
  if ((cert === undefined) !== (key === undefined)) {
    fail(cert === undefined ? "client-key is set without client-certificate" : "client-certificate is set without client-key");
  }

  const hasToken = Boolean(user.token || user.tokenFile);
  const hasBasic = Boolean(user.username || user.password);
  if (hasToken && hasBasic) fail("user has both a token and a username/password; only one is allowed");

  let auth: Credentials = { kind: "none" };
  if (user.token) {
    auth = { kind: "token", token: staticToken(user.token) };
  } else if (user.tokenFile) {
    const full = isAbsolute(user.tokenFile) ? user.tokenFile : resolve(baseDir, user.tokenFile);
    const source = new FileTokenSource(full, {
      files,
      clock: options.clock ?? realClock,
      refreshMs: options.tokenRefreshMs ?? defaultTokenRefreshMs,
      logger: options.logger ?? silentLogger,
    });
    await source.token().catch((err: unknown) => fail(`cannot read tokenFile ${full}: ${(err as Error).message}`));
    auth = { kind: "token", token: source };
  } else if (hasBasic) {
    auth = { kind: "basic", username: user.username ?? "", password: user.password ?? "" };
  }

  return {
    server,
    tls: {
      ca,
      cert,
      key,
      insecureSkipVerify: insecure,
      serverName: cluster["tls-server-name"] ?? undefined,
    },
    auth,
    origin: where,
    namespace,
  };
}

function rejectUnsupported(user: KubeconfigUser, fail: (msg: string) => never): void {
  if (user.exec !== undefined && user.exec !== null) {
    const command = typeof user.exec === "object" && "command" in user.exec ? ` (command ${JSON.stringify(user.exec.command)})` : "";
    fail(`user authentication through an exec credential plugin${command} is not supported; use a token, tokenFile or client certificate`);
  }
  if (user["auth-provider"] !== undefined && user["auth-provider"] !== null) {
    const provider = user["auth-provider"];
    const name = typeof provider === "object" && "name" in provider ? ` "${String(provider.name)}"` : "";
    fail(`user authentication through auth-provider${name} is not supported; use a token, tokenFile or client certificate`);
  }
  if (user.as || user["as-uid"] || user["as-groups"] || user["as-user-extra"]) {
    fail("impersonation (as, as-uid, as-groups, as-user-extra) is not supported");
  }
}

function checkServerUrl(raw: string, label: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new KubeconfigError(`${label}: "${raw}" is not a URL`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new KubeconfigError(`${label}: "${raw}" must be an http or https URL`);
  }
  return url.toString().replace(/\/+$/, "");
}

/** Formats host:port for a URL, bracketing IPv6 literals. */
function joinHostPort(host: string, port: string): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * The pod's own service account: KUBERNETES_SERVICE_HOST/PORT, the mounted token (re-read as it
 * rotates) and CA.
 */
export async function inClusterConfig(options: LoadContext & { readonly inClusterPaths?: InClusterPaths }): Promise<RestConfig> {
  const env = options.env ?? realHostEnv();
  const files = options.files ?? realHostFiles;
  const paths = options.inClusterPaths ?? defaultInClusterPaths;
  const logger = options.logger ?? silentLogger;
  const host = env["KUBERNETES_SERVICE_HOST"] ?? "";
  const port = env["KUBERNETES_SERVICE_PORT"] ?? "";
  if (host === "" || port === "") {
    throw new KubeconfigError(
      "no kubeconfig or --master given, and not running in a cluster (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set for in-cluster configuration)",
    );
  }
  const token = new FileTokenSource(paths.token, {
    files,
    clock: options.clock ?? realClock,
    refreshMs: options.tokenRefreshMs ?? defaultTokenRefreshMs,
    logger,
  });
  try {
    await token.token();
  } catch (err) {
    throw new KubeconfigError(`in-cluster configuration: cannot read service account token ${paths.token}: ${(err as Error).message}`);
  }
  let ca: string | undefined;
  try {
    ca = await files.readText(paths.ca);
  } catch (err) {
    // As client-go: carry on with the system roots, but say why verification may fail.
    logger.warn("Cannot read the in-cluster CA; using the system roots", { path: paths.ca, err: (err as Error).message });
  }
  let namespace: string | undefined;
  try {
    namespace = (await files.readText(paths.namespace)).trim() || undefined;
  } catch {
    namespace = undefined;
  }
  return {
    server: `https://${joinHostPort(host, port)}`,
    tls: { ca, insecureSkipVerify: false },
    auth: { kind: "token", token },
    origin: "in-cluster",
    namespace,
  };
}
