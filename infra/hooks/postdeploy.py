"""azd postdeploy hook: subscribe the Event Grid triggered function to the custom topic.

azd runs this after `azd deploy` (azure.yaml), with the environment's values, main.bicep's
outputs among them, in os.environ. It does nothing unless the topic was provisioned
(ENABLE_EVENT_GRID=true). Otherwise it deploys infra/modules/eventgrid-subscription.bicep with
the Azure CLI, which must be installed and signed in (`az login`) to the same tenant as azd.
The subscription cannot be part of `azd provision`: Event Grid checks that the function exists
when the subscription is created, and provisioning runs before the code is deployed.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "modules" / "eventgrid-subscription.bicep"
FUNCTION_APP = ROOT / "function_app.py"
# main.bicep output -> eventgrid-subscription.bicep parameter
PARAMETERS = {
    "EVENT_GRID_TOPIC_NAME": "topicName",
    "AZURE_FUNCTION_APP_NAME": "functionAppName",
    "AZURE_STORAGE_ACCOUNT_NAME": "storageAccountName",
    "EVENT_GRID_DEAD_LETTER_CONTAINER": "deadLetterContainerName",
    "EVENT_GRID_DEAD_LETTER_IDENTITY_ID": "deadLetterIdentityId",
}


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def event_grid_function_name(source: Path = FUNCTION_APP) -> str:
    """The name the host gives the function decorated with event_grid_trigger (read from the code)."""
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        decorators = {_decorator_name(d): d for d in node.decorator_list}
        if "event_grid_trigger" not in decorators:
            continue
        renamed = decorators.get("function_name")
        if isinstance(renamed, ast.Call) and renamed.args and isinstance(renamed.args[0], ast.Constant):
            found.append(str(renamed.args[0].value))
        elif isinstance(renamed, ast.Call) and renamed.keywords and isinstance(renamed.keywords[0].value, ast.Constant):
            found.append(str(renamed.keywords[0].value.value))
        else:
            found.append(node.name)
    if len(found) != 1:
        raise SystemExit(f"expected one event_grid_trigger function in {source.name}, found {found}")
    return found[0]


def az_command(environ: Mapping[str, str], function_name: str) -> list[str]:
    missing = [name for name in ("AZURE_RESOURCE_GROUP", *PARAMETERS) if not environ.get(name)]
    if missing:
        raise SystemExit(f"postdeploy: missing azd environment values {', '.join(missing)}; run azd provision")
    command = ["az", "deployment", "group", "create", "--name", "eventgrid-subscription",
               "--resource-group", environ["AZURE_RESOURCE_GROUP"], "--template-file", str(TEMPLATE),
               "--only-show-errors", "--output", "none", "--parameters", f"functionName={function_name}"]
    command += [f"{parameter}={environ[name]}" for name, parameter in PARAMETERS.items()]
    if environ.get("AZURE_SUBSCRIPTION_ID"):
        command += ["--subscription", environ["AZURE_SUBSCRIPTION_ID"]]
    return command


def main(environ: Mapping[str, str] = os.environ) -> int:
    if not environ.get("EVENT_GRID_TOPIC_NAME"):
        print("postdeploy: no Event Grid topic in this environment (ENABLE_EVENT_GRID is not true); nothing to do")
        return 0
    if shutil.which("az") is None:
        print("postdeploy: the Azure CLI (az) is needed to subscribe the function to the Event Grid topic",
              file=sys.stderr)
        return 1
    function_name = event_grid_function_name()
    command = az_command(environ, function_name)
    attempts = int(environ.get("POSTDEPLOY_ATTEMPTS", "5"))
    delay = float(environ.get("POSTDEPLOY_RETRY_SECONDS", "20"))
    for attempt in range(1, attempts + 1):
        # The host indexes a new deployment's functions a little after azd deploy returns.
        if subprocess.run(command).returncode == 0:
            print(f"postdeploy: Event Grid topic {environ['EVENT_GRID_TOPIC_NAME']} delivers to {function_name}")
            return 0
        if attempt < attempts:
            print(f"postdeploy: attempt {attempt} of {attempts} failed; retrying in {delay:g} s", file=sys.stderr)
            time.sleep(delay)
    return 1


if __name__ == "__main__":
    sys.exit(main())
