// infill-ls for VS Code: starts the infill-ls language server and lets vscode-languageclient provide
// inline completions (LSP 3.18 textDocument/inlineCompletion) from it. Adds the code-action commands,
// a status bar item fed by the server's infill/modelState notifications, and an output channel.

import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";

const SECTION = "infill";
const RUN_ACTION = "infill.runAction"; // the server's workspace/executeCommand command
const MODEL_STATE = "infill/modelState";
const EXPLANATION = "infill/explanation";
const STATUS = "infill/status";

/** Actions the quick pick offers when the server has no code actions at the selection. */
const KNOWN_ACTIONS = ["explain", "refactor", "docstring", "fix", "tests"];

interface ModelStateParams {
  state: "idle" | "loading" | "ready" | "error";
  detail?: string;
}

interface ExplanationParams {
  uri: string;
  title: string;
  markdown: string;
  path?: string; // the server's copy of the explanation, which it may also open with window/showDocument
}

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let modelState: ModelStateParams = { state: "idle" };
let lastLatencyMs: number | undefined;

/**
 * Workspace trust (docs/SECURITY.md): a cloned repository's .vscode/settings.json must not choose the program
 * we run, its environment, or a server that receives the code. In a workspace the user has not trusted, these
 * settings take the user's own (global) value only; package.json also lists them as restrictedConfigurations.
 */
export function userScoped<T>(config: vscode.WorkspaceConfiguration, key: string, fallback: T): T {
  if (vscode.workspace.isTrusted) return config.get<T>(key, fallback);
  const inspected = config.inspect<T>(key);
  return inspected?.globalValue ?? inspected?.defaultValue ?? fallback;
}

/** The executable: the setting, the workspace's virtual environment (trusted workspaces only), a pipx install, then PATH. */
export function findServer(config: vscode.WorkspaceConfiguration, folders: readonly string[]): string {
  const configured = userScoped(config, "server.path", "").trim();
  if (configured) {
    return configured.replace(/^~(?=$|\/)/, os.homedir());
  }
  const bin = process.platform === "win32" ? path.join("Scripts", "infill-ls.exe") : path.join("bin", "infill-ls");
  const candidates: string[] = [];
  for (const folder of vscode.workspace.isTrusted ? folders : []) {
    for (const venv of [".venv", "venv", "env"]) {
      candidates.push(path.join(folder, venv, bin));
    }
  }
  if (process.env.VIRTUAL_ENV) {
    candidates.push(path.join(process.env.VIRTUAL_ENV, bin));
  }
  const pipxHome = process.env.PIPX_HOME ?? path.join(os.homedir(), ".local", "pipx");
  const pipxBin = process.env.PIPX_BIN_DIR ?? path.join(os.homedir(), ".local", "bin");
  candidates.push(path.join(pipxBin, "infill-ls"), path.join(pipxHome, "venvs", "infill-ls", bin));
  for (const candidate of candidates) {
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not there: try the next one
    }
  }
  return "infill-ls";
}

function optionalInt(config: vscode.WorkspaceConfiguration, key: string): number | undefined {
  const value = config.get<number | null>(key, null);
  return typeof value === "number" && Number.isInteger(value) ? value : undefined;
}

/** The server's settings object (snake_case, see lsp_server/config.py) from the VS Code settings. */
export function serverSettings(config: vscode.WorkspaceConfiguration): Record<string, unknown> {
  const model = userScoped(config, "model", "default") || "default";
  const models: Record<string, Record<string, unknown>> = JSON.parse(JSON.stringify(userScoped(config, "models", {})));
  const overrides: Record<string, unknown> = {};
  const gpuLayers = optionalInt(config, "gpuLayers");
  const contextLength = optionalInt(config, "contextLength");
  const threads = optionalInt(config, "threads");
  if (gpuLayers !== undefined) overrides.n_gpu_layers = gpuLayers;
  if (contextLength !== undefined) overrides.n_ctx = contextLength;
  if (threads !== undefined) overrides.n_threads = threads;
  const backend = config.get<string>("backend", "llama_cpp");
  const backendUrl = userScoped(config, "backendUrl", "").trim();
  if (backend && backend !== "llama_cpp") overrides.backend = backend;
  if (backendUrl) overrides.url = backendUrl;
  if (Object.keys(overrides).length > 0) {
    models[model] = { ...(models[model] ?? {}), ...overrides };
  }
  const settings: Record<string, unknown> = {
    model,
    models,
    load: config.get("load", "startup"),
    log_level: config.get("logLevel", "info"),
    completion: {
      enable: config.get("enable", true),
      languages: config.get("languages", {}),
      max_tokens_single: config.get("budget.maxTokensSingle", 48),
      max_tokens_multi: config.get("budget.maxTokensMulti", 160),
      time_budget_ms: config.get("budget.timeMs", 1000),
      time_budget_invoked_ms: config.get("budget.invokedTimeMs", 4000),
      prefix_tokens: config.get("budget.prefixTokens", 1024),
      suffix_tokens: config.get("budget.suffixTokens", 256),
      extra_tokens: config.get("budget.extraTokens", 512),
    },
    cache: {
      disk: config.get("cache.disk", true),
      ...(userScoped(config, "cache.dir", "") ? { dir: userScoped(config, "cache.dir", "") } : {}),
    },
  };
  return settings;
}

function updateStatus(): void {
  const { state, detail } = modelState;
  const latency = lastLatencyMs !== undefined ? ` ${lastLatencyMs} ms` : "";
  const enabled = vscode.workspace.getConfiguration(SECTION).get("enable", true);
  switch (state) {
    case "loading":
      statusItem.text = "$(loading~spin) infill: loading";
      break;
    case "ready":
      statusItem.text = enabled ? `$(sparkle) infill${latency}` : "$(circle-slash) infill: off";
      break;
    case "error":
      statusItem.text = "$(error) infill: error";
      break;
    default:
      statusItem.text = client?.state === State.Running ? "$(sparkle) infill: idle" : "$(debug-disconnect) infill";
  }
  statusItem.tooltip = new vscode.MarkdownString(
    `**infill-ls**: model ${state}${detail ? ` (${detail})` : ""}` +
      (lastLatencyMs !== undefined ? `\n\nlast completion: ${lastLatencyMs} ms` : "") +
      "\n\nClick for the server status.",
  );
  statusItem.accessibilityInformation = { label: `infill-ls model ${state}` };
  statusItem.backgroundColor = state === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  statusItem.show();
}

async function showExplanation(params: ExplanationParams): Promise<void> {
  output.appendLine(`[explanation] ${params.title} (${params.uri})`);
  if (params.path) {
    // The server usually opens its markdown file with window/showDocument: do not show it twice.
    await new Promise((resolve) => setTimeout(resolve, 500));
    if (vscode.workspace.textDocuments.some((d) => d.uri.scheme === "file" && d.uri.fsPath === params.path)) return;
    if (fs.existsSync(params.path)) {
      const file = await vscode.workspace.openTextDocument(vscode.Uri.file(params.path));
      await vscode.window.showTextDocument(file, { viewColumn: vscode.ViewColumn.Beside, preview: true });
      return;
    }
  }
  const doc = await vscode.workspace.openTextDocument({
    language: "markdown",
    content: `# ${params.title}\n\n${params.markdown}\n`,
  });
  await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.Beside, preview: true, preserveFocus: false });
}

async function startClient(context: vscode.ExtensionContext): Promise<void> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
  const command = findServer(config, folders);
  const args = ["serve", ...userScoped<string[]>(config, "server.args", [])];
  const env = { ...process.env, ...userScoped<Record<string, string>>(config, "server.env", {}) };
  output.appendLine(`starting ${command} ${args.join(" ")}`);
  const serverOptions: ServerOptions = { command, args, transport: TransportKind.stdio, options: { env } };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }, { scheme: "vscode-remote" }],
    // `trusted`: what could point the server at a program or a remote URL came from user scope (or the user
    // trusts this workspace), so the server may honour it; it is never read from a settings file.
    initializationOptions: { ...serverSettings(config), trusted: true },
    outputChannel: output,
    traceOutputChannel: output,
    middleware: {
      provideInlineCompletionItems: async (document, position, ctx, token, next) => {
        const started = Date.now();
        const result = await next(document, position, ctx, token);
        if (!token.isCancellationRequested) {
          lastLatencyMs = Date.now() - started;
          updateStatus();
        }
        return result;
      },
      provideCompletionItem: async (document, position, ctx, token, next) => {
        if (!vscode.workspace.getConfiguration(SECTION).get("completionItems", false)) return [];
        return next(document, position, ctx, token);
      },
    },
  };
  client = new LanguageClient("infill-ls", "infill-ls", serverOptions, clientOptions);
  client.onDidChangeState(() => updateStatus());
  await client.start();
  context.subscriptions.push(
    client.onNotification(MODEL_STATE, (params: ModelStateParams) => {
      modelState = params;
      output.appendLine(`[model] ${params.state}${params.detail ? `: ${params.detail}` : ""}`);
      updateStatus();
    }),
    client.onNotification(EXPLANATION, (params: ExplanationParams) => void showExplanation(params)),
  );
  updateStatus();
}

async function runAction(actionName: string, instruction?: string): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!client || !editor) {
    void vscode.window.showWarningMessage("infill: open a file first");
    return;
  }
  const selection = editor.selection;
  const range = client.code2ProtocolConverter.asRange(
    selection.isEmpty ? editor.document.lineAt(selection.active.line).range : selection,
  );
  const uri = editor.document.uri.toString();
  const args: unknown[] = [uri, range, actionName];
  if (instruction) args.push(instruction);
  await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Window, title: `infill: ${actionName}…` },
    async () => {
      try {
        await client!.sendRequest(ExecuteCommandRequest.type, { command: RUN_ACTION, arguments: args });
      } catch (error) {
        output.appendLine(`[action] ${actionName} failed: ${String(error)}`);
        void vscode.window.showErrorMessage(`infill: ${actionName} failed: ${String(error)}`);
      }
    },
  );
}

/** The infill code actions the server offers at the selection (their `command.arguments[2]` is the action). */
async function pickAction(): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) return;
  let names = KNOWN_ACTIONS;
  try {
    const actions = await vscode.commands.executeCommand<(vscode.CodeAction | vscode.Command)[]>(
      "vscode.executeCodeActionProvider", editor.document.uri, editor.selection, undefined, 50,
    );
    const found = new Set<string>();
    for (const action of actions ?? []) {
      const cmd = "command" in action && typeof action.command === "object" ? action.command : (action as vscode.Command);
      if (cmd?.command === RUN_ACTION && typeof cmd.arguments?.[2] === "string") found.add(cmd.arguments[2] as string);
      const data = (action as { data?: { action?: string } }).data;
      if (typeof data?.action === "string") found.add(data.action);
    }
    if (found.size > 0) names = [...found];
  } catch (error) {
    output.appendLine(`[action] code actions unavailable: ${String(error)}`);
  }
  const picked = await vscode.window.showQuickPick(names, { placeHolder: "infill code action" });
  if (!picked) return;
  let instruction: string | undefined;
  if (picked === "refactor") {
    instruction = await vscode.window.showInputBox({ prompt: "Instruction (optional)" });
  }
  await runAction(picked, instruction);
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("infill-ls", { log: true });
  statusItem = vscode.window.createStatusBarItem("infill.status", vscode.StatusBarAlignment.Right, 100);
  statusItem.name = "infill-ls";
  statusItem.command = "infill.showStatus";
  context.subscriptions.push(output, statusItem);
  updateStatus();

  context.subscriptions.push(
    vscode.commands.registerCommand("infill.explain", () => runAction("explain")),
    vscode.commands.registerCommand("infill.pickAction", () => pickAction()),
    vscode.commands.registerCommand("infill.editWithInstruction", async () => {
      const instruction = await vscode.window.showInputBox({ prompt: "How should the selection change?" });
      if (instruction) await runAction("refactor", instruction);
    }),
    vscode.commands.registerCommand("infill.showLog", () => output.show(true)),
    vscode.commands.registerCommand("infill.restart", async () => {
      await client?.stop();
      client = undefined;
      modelState = { state: "idle" };
      await startClient(context);
    }),
    vscode.commands.registerCommand("infill.toggle", async () => {
      const config = vscode.workspace.getConfiguration(SECTION);
      await config.update("enable", !config.get("enable", true), vscode.ConfigurationTarget.Global);
    }),
    vscode.commands.registerCommand("infill.showStatus", async () => {
      if (!client) return;
      const status = await client.sendRequest(STATUS, {});
      output.appendLine(`[status] ${JSON.stringify(status, null, 2)}`);
      output.show(true);
    }),
    vscode.workspace.onDidGrantWorkspaceTrust(() => vscode.commands.executeCommand("infill.restart")),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration(SECTION) || !client) return;
      if (event.affectsConfiguration(`${SECTION}.server`)) {
        await vscode.commands.executeCommand("infill.restart");
        return;
      }
      const settings = serverSettings(vscode.workspace.getConfiguration(SECTION));
      await client.sendNotification(DidChangeConfigurationNotification.type, { settings: { infill: settings } });
      updateStatus();
    }),
  );

  try {
    await startClient(context);
  } catch (error) {
    modelState = { state: "error", detail: String(error) };
    output.appendLine(`infill-ls failed to start: ${String(error)}`);
    updateStatus();
    void vscode.window.showErrorMessage(
      `infill-ls failed to start: ${String(error)}. Set "infill.server.path" to the infill-ls executable.`,
    );
  }
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}
