"""The azd template (azure.yaml, infra/): checked offline, against the app's own code.

* `make infra-check` (pycep-parser + checkov, in .venv-infra) passes, and fails when it should;
* the function app gets every setting shared/config/settings.py requires, with values it accepts;
* identity-based storage and telemetry, the queues, the HTTP concurrency, the optional parts;
* role assignments use Azure's built-in role definition ids, for the right principals;
* resource API versions are ones the template cites; no registry modules; the azd wiring.
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bicep_eval import Template, Unresolved, accessor_path

from shared.config.queues import QueueNames
from shared.config.settings import RetrySettings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHECKER = ROOT / "tests" / "infra" / "infra_check.py"
INFRA_PYTHON = ROOT / ".venv-infra" / "bin" / "python"
MAIN_REQUIRED = {"environmentName": "dev", "location": "eastus2"}  # what azd always passes
# A deploy-time value (a resource's endpoint, an identity's client id) stands in as this URL.
PLACEHOLDER = "https://placeholder.invalid/"

# Azure built-in role definition ids, as listed in Microsoft Learn's "Azure built-in roles"
# (MicrosoftDocs/azure-docs, articles/role-based-access-control/built-in-roles.md, 2026-04-09).
BUILT_IN_ROLES = {
    "CognitiveServicesOpenAIUser": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
    "StorageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "StorageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "StorageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "MonitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "AppConfigurationDataReader": "516239f1-63e1-4d78-a4de-a74fb236a071",
    "AppConfigurationDataOwner": "5ae67dd6-50cb-40e7-96ff-dc2bfa4b606b",
    "EventGridDataSender": "d5a91429-5739-47e2-a06b-3470a27159e7",
    "KeyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
}

# Resource API versions and where each is cited (also in comments next to the resources).
SAMPLE = "Azure-Samples/functions-quickstart-python-http-azd infra/ (commit 3dc075a)"
LEARN = "learn.microsoft.com/azure/templates"
CITED_API_VERSIONS = {
    ("Microsoft.Resources/resourceGroups", "2021-04-01"): SAMPLE,
    ("Microsoft.ManagedIdentity/userAssignedIdentities", "2023-01-31"): LEARN,
    ("Microsoft.OperationalInsights/workspaces", "2021-12-01-preview"): SAMPLE,
    ("Microsoft.Insights/components", "2020-02-02"): SAMPLE,
    ("Microsoft.Storage/storageAccounts", "2023-01-01"): SAMPLE,
    ("Microsoft.Storage/storageAccounts/blobServices", "2023-01-01"): SAMPLE,
    ("Microsoft.Storage/storageAccounts/blobServices/containers", "2023-01-01"): SAMPLE,
    ("Microsoft.Storage/storageAccounts/queueServices", "2023-01-01"): SAMPLE,
    ("Microsoft.Storage/storageAccounts/queueServices/queues", "2023-01-01"): SAMPLE,
    ("Microsoft.Web/serverfarms", "2023-12-01"): SAMPLE,
    ("Microsoft.Web/sites", "2023-12-01"): SAMPLE,
    ("Microsoft.Authorization/roleAssignments", "2022-04-01"): SAMPLE,
    ("Microsoft.CognitiveServices/accounts", "2023-05-01"): "Azure-Samples/azure-search-openai-demo",
    ("Microsoft.CognitiveServices/accounts/deployments", "2023-05-01"): "Azure-Samples/azure-search-openai-demo",
    ("Microsoft.EventGrid/topics", "2022-06-15"): LEARN,
    ("Microsoft.EventGrid/eventSubscriptions", "2022-06-15"): LEARN,
    ("Microsoft.AppConfiguration/configurationStores", "2023-03-01"): LEARN,
    ("Microsoft.KeyVault/vaults", "2023-07-01"): LEARN,
}

# Models Azure has retired, or no longer offers for new deployments (Microsoft Learn, "Model
# retirement schedule", 2026-09-02, and the legacy-models page): a template naming one fails
# `azd up`. By prefix, and by exact name.
RETIRED_PREFIXES = ("gpt-35-turbo", "gpt-3.5-turbo", "gpt-4-32k", "gpt-4-turbo", "gpt-4.5-preview", "o1-preview",
                    "o1-mini", "text-davinci-", "text-curie-", "text-babbage-", "text-ada-", "davinci-002",
                    "babbage-002")
RETIRED_NAMES = {"gpt-4", "o1", "o1-pro", "o3", "o3-mini", "o4-mini", "codex-mini", "gpt-4o", "gpt-4o-mini",
                 "gpt-5-chat", "gpt-5.1-chat", "gpt-5.2-chat", "gpt-5.3-chat", "ada", "babbage", "curie", "davinci"}


def retired(model: str) -> bool:
    return model in RETIRED_NAMES or model.startswith(RETIRED_PREFIXES)


def infra_python() -> Path:
    if INFRA_PYTHON.exists():
        return INFRA_PYTHON
    message = ".venv-infra is missing: `make infra-check` (or `make test`) creates it from requirements-infra.txt"
    if os.environ.get("INFRA_CHECK_REQUIRED"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def template() -> Template:
    done = subprocess.run([str(infra_python()), str(CHECKER), "--dump"], capture_output=True, text=True,
                          timeout=300)
    dumped = json.loads(done.stdout)
    assert not dumped["errors"], dumped["errors"]
    return Template(dumped["trees"], INFRA)


def app_settings(template: Template, **parameters) -> dict:
    """The function app's settings for main.bicep parameters (defaults, overridden by ``parameters``)."""
    main = template.scope("main.bicep", **{**MAIN_REQUIRED, **parameters})
    function = main.module("function")
    site = function.tree["resources"]["site"]["config"]
    loop = site["properties"]["siteConfig"]["appSettings"]
    assert loop["loop_type"] == {"type": "object", "detail": {"item_name": "setting", "object_name": "settings"}}
    settings = function.value("settings")
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in settings.items()), settings
    return settings


def environ_from(settings: dict) -> dict[str, str]:
    environ = {key: PLACEHOLDER if isinstance(value, Unresolved) else value for key, value in settings.items()}
    if environ.get("COMPLETIONS_CALLER_KEYS", "").startswith("@Microsoft.KeyVault("):
        environ["COMPLETIONS_CALLER_KEYS"] = RESOLVED_CALLER_KEYS
    return environ


def required_by_the_app() -> set[str]:
    """What load_settings reports as missing from an empty environment: read from the code."""
    with pytest.raises(SettingsError) as caught:
        load_settings({}, function_timeout=lambda: None)
    return {name for name, reason in caught.value.problems.items() if "is required" in reason}


FEATURES = {
    "defaults": {},
    "existing Azure OpenAI": {"openAiAccountName": "my-aoai", "openAiResourceGroupName": "ai-rg",
                              "openAiDeploymentName": "instruct"},
    "App Configuration": {"enableAppConfiguration": True},
    "Event Grid": {"enableEventGrid": True},
    "synchronous build": {"pythonThreadpoolThreadCount": 16},
    "caller keys": {"callerKeysVaultName": "kv-callers", "callerKeysVaultResourceGroupName": "sec-rg"},
}
# What the platform puts in place of a Key Vault reference when it resolves it.
RESOLVED_CALLER_KEYS = json.dumps({"team-a": "0" * 64})


# -- make infra-check -----------------------------------------------------------------------------

def test_make_infra_check_passes():
    """What `make infra-check` runs: every .bicep parses; checkov: no failure, no parse error, skips with reasons."""
    done = subprocess.run([str(infra_python()), str(CHECKER)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\d+ passed, 0 failed, \d+ skipped, 0 parsing errors", done.stdout), done.stdout
    count = len(list(INFRA.rglob("*.bicep")))
    assert f"pycep-parser: {count} of {count} .bicep files parsed" in done.stdout


def test_infra_check_fails_on_a_failed_check_a_bare_skip_or_a_parse_error(tmp_path):
    (tmp_path / "bad.bicep").write_text("""
resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' = {
  name: 'stbad'
  location: 'eastus2'
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_206
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_0'
  }
}
""")
    (tmp_path / "broken.bicep").write_text("resource x 'Microsoft.Storage/storageAccounts@2023-01-01' = {\n")
    done = subprocess.run([str(infra_python()), str(CHECKER), "--infra", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pycep-parser: broken.bicep:" in done.stdout
    assert "FAILED CKV_AZURE_44" in done.stdout  # TLS 1.0
    assert "SKIPPED WITHOUT A REASON CKV_AZURE_206" in done.stdout


def test_no_operator_is_read_differently_by_pycep_and_bicep(template):
    """pycep-parser applies no precedence: `!a ? b : c` parses as `!(a ? b : c)`. Such trees are the
    misreadings (no one writes them on purpose); main.bicep's header says to parenthesize."""
    suspicious = []

    def walk(node, where):
        if isinstance(node, list):
            for item in node:
                walk(item, where)
        elif isinstance(node, dict):
            operator = node.get("operator")
            if isinstance(operator, dict) and "type" in operator:
                kind, operands = operator["type"], operator.get("operands", {})
                inner = [o.get("operator", {}).get("type") for o in operands.values() if isinstance(o, dict)]
                if kind == "not" and set(inner) & {"conditional", "and", "or", "equals", "not_equals",
                                                   "greater_than", "less_than", "coalesce"}:
                    suspicious.append(where)
                if kind != "conditional" and kind != "property_accessor" and "conditional" in inner:
                    suspicious.append(where)
                if kind == "property_accessor" and "coalesce" in inner:
                    suspicious.append(where)
            for value in node.values():
                walk(value, where)

    for file, tree in template.trees.items():
        walk(tree, file)
    assert not suspicious, suspicious


# -- what the app needs at run time ---------------------------------------------------------------

@pytest.mark.parametrize("feature", FEATURES)
def test_template_sets_every_setting_the_app_requires(template, feature):
    settings = app_settings(template, **FEATURES[feature])
    required = required_by_the_app()
    assert required, "load_settings({}) reports nothing as required: this check would prove nothing"
    assert required <= set(settings), required - set(settings)
    loaded = load_settings(environ_from(settings))  # raises SettingsError naming any value it rejects
    assert loaded.upstream.auth == "managed_identity"
    assert loaded.upstream.client_id == PLACEHOLDER  # the identity's client id, known at deployment
    assert loaded.upstream.api_key is None and "AZURE_OPENAI_API_KEY" not in settings


def test_the_app_runs_as_the_user_assigned_identity(template):
    settings = app_settings(template)
    client_id = Unresolved("identity.outputs.clientId")
    assert settings["AZURE_OPENAI_AUTH"] == "managed_identity"
    assert settings["AZURE_CLIENT_ID"] == client_id
    main = template.scope("main.bicep", **MAIN_REQUIRED)
    function = main.module("function")
    site = function.tree["resources"]["site"]["config"]
    assert site["identity"]["type"] == "UserAssigned"
    assert function.value(site["identity"]) == {
        "type": "UserAssigned", "userAssignedIdentities": {Unresolved("${identity.outputs.id}"): {}}}
    auth = site["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert function.value(auth) == {"type": "UserAssignedIdentity",
                                    "userAssignedIdentityResourceId": Unresolved("identity.outputs.id")}


def test_host_storage_is_identity_based(template):
    """AzureWebJobsStorage (function_app.py's connection name) by identity: no connection string."""
    source = ast.parse((ROOT / "function_app.py").read_text())
    connection = next(node.value.value for node in source.body if isinstance(node, ast.Assign)
                      and [getattr(t, "id", None) for t in node.targets] == ["STORAGE"])
    settings = app_settings(template)
    assert connection not in settings
    assert settings[f"{connection}__credential"] == "managedidentity"
    assert settings[f"{connection}__clientId"] == settings["AZURE_CLIENT_ID"]
    assert settings[f"{connection}__blobServiceUri"] == Unresolved("storage.properties.primaryEndpoints.blob")
    assert settings[f"{connection}__queueServiceUri"] == Unresolved("storage.properties.primaryEndpoints.queue")


def test_storage_allows_no_shared_keys_no_public_blobs_and_tls_1_2(template):
    storage = template.trees["modules/storage.bicep"]["resources"]["storage"]["config"]["properties"]
    assert storage["allowSharedKeyAccess"] is False
    assert storage["allowBlobPublicAccess"] is False
    assert storage["minimumTlsVersion"] == "TLS1_2"
    assert storage["supportsHttpsTrafficOnly"] is True


def test_the_queues_the_app_uses_exist(template):
    for feature in FEATURES:
        settings = app_settings(template, **FEATURES[feature])
        queues = QueueNames.from_environ(environ_from(settings))  # the names the bindings will use
        storage = template.scope("main.bicep", **MAIN_REQUIRED, **FEATURES[feature]).module("storage")
        assert set(storage.value("queueNames")) == {queues.requests, queues.poison, queues.results}
    assert QueueNames.from_environ(environ_from(app_settings(template))) == QueueNames()


def test_telemetry_authenticates_as_the_identity(template):
    settings = app_settings(template)
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == Unresolved(
        "applicationInsights.properties.ConnectionString")
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == Unresolved(
        "Authorization=AAD;ClientId=${identity.outputs.clientId}")
    component = template.trees["modules/monitoring.bicep"]["resources"]["applicationInsights"]["config"]
    assert component["properties"]["DisableLocalAuth"] is True


def test_http_concurrency_is_what_the_app_holds_per_instance(template):
    main = template.scope("main.bicep", **MAIN_REQUIRED)
    per_instance = main.value("httpPerInstanceConcurrency")
    assert per_instance == 512
    decorators = {d["type"]: d.get("argument") for d in
                  template.trees["main.bicep"]["parameters"]["httpPerInstanceConcurrency"]["decorators"]}
    assert decorators["min_value"] == 1 and decorators["max_value"] == 1000  # Flex Consumption's range
    function = main.module("function")
    scale = function.tree["resources"]["site"]["config"]["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert function.value(scale["triggers"]["http"]["perInstanceConcurrency"]) == per_instance
    assert function.value(scale["instanceMemoryMB"]) == 2048
    assert function.value(scale["maximumInstanceCount"]) == 100
    # The app keeps as many upstream calls in flight as the plan sends it invocations.
    settings = app_settings(template)
    assert load_settings(environ_from(settings)).retry.max_concurrency == per_instance
    assert app_settings(template, httpPerInstanceConcurrency=64)["AZURE_OPENAI_MAX_CONCURRENCY"] == "64"
    assert RetrySettings.max_concurrency <= per_instance


def test_threadpool_setting_only_when_asked_for(template):
    assert "PYTHON_THREADPOOL_THREAD_COUNT" not in app_settings(template)
    assert app_settings(template, pythonThreadpoolThreadCount=16)["PYTHON_THREADPOOL_THREAD_COUNT"] == "16"


def test_app_configuration_endpoint_only_with_the_store(template):
    assert "AZURE_APPCONFIG_ENDPOINT" not in app_settings(template)
    assert app_settings(template, enableAppConfiguration=True)["AZURE_APPCONFIG_ENDPOINT"] == Unresolved(
        "appConfig.outputs.endpoint")


def test_azure_openai_new_or_existing(template):
    main = template.scope("main.bicep", **MAIN_REQUIRED)
    assert main.condition("modules", "openAi") is True
    new = main.module("openAi")
    account = new.tree["resources"]["account"]["config"]
    assert account["kind"] == "OpenAI" and account["properties"]["disableLocalAuth"] is True
    assert new.value(account["properties"]["customSubDomainName"]) == new.value("name")  # Entra needs one
    deployment = new.tree["resources"]["deployment"]["config"]
    assert new.value(deployment["properties"]["model"]) == {"format": "OpenAI", "name": "gpt-5.4-mini",
                                                            "version": "2026-03-17"}
    assert new.value(deployment["sku"]) == {"name": "GlobalStandard", "capacity": 30}
    assert new.value(deployment["name"]) == "gpt-5.4-mini"  # the deployment is named after its model
    settings = app_settings(template)
    assert settings["AZURE_OPENAI_DEPLOYMENT"] == "gpt-5.4-mini" and "AZURE_OPENAI_API" not in settings  # auto
    assert settings["AZURE_OPENAI_ENDPOINT"] == Unresolved("openAiAccess.outputs.endpoint")
    other = template.scope("main.bicep", **MAIN_REQUIRED, openAiModelName="gpt-5.5", openAiModelVersion="2026-04-24",
                           openAiDeploymentName="chat").module("openAi")
    assert other.value(other.tree["resources"]["deployment"]["config"]["properties"]["model"])["name"] == "gpt-5.5"
    assert app_settings(template, openAiModelName="gpt-5.5", openAiDeploymentName="chat")[
        "AZURE_OPENAI_DEPLOYMENT"] == "chat"

    existing = template.scope("main.bicep", **MAIN_REQUIRED, **FEATURES["existing Azure OpenAI"])
    assert existing.condition("modules", "openAi") is False
    access_call = existing.tree["modules"]["openAiAccess"]["config"]
    assert existing.value(access_call["scope"]["function"]["parameters"]["resource_group_name"]) == "ai-rg"
    assert existing.module("openAiAccess").value("accountName") == "my-aoai"
    assert app_settings(template, **FEATURES["existing Azure OpenAI"])["AZURE_OPENAI_DEPLOYMENT"] == "instruct"


def test_no_retired_model_is_named_anywhere_in_the_template(template):
    """Azure retired the last completions model (gpt-35-turbo-instruct) on 2025-11-11: `azd up`
    must deploy a model offered today, in main.bicep's defaults and in the azd parameters file."""
    assert retired("gpt-35-turbo-instruct") and retired("gpt-4o") and not retired("gpt-5.4-mini")
    main = template.scope("main.bicep", **MAIN_REQUIRED)
    model = main.module("openAi").value("modelName")
    assert model == "gpt-5.4-mini" and not retired(model)
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert not retired(re.fullmatch(r"\$\{[A-Z_]+=(.*)\}", parameters["openAiModelName"]["value"]).group(1))
    named = re.compile(r"(?<![\w.-])((?:gpt|o\d|text|davinci|babbage|codex)[\w.-]*)")
    for path in [*INFRA.rglob("*.bicep"), INFRA / "main.parameters.json", ROOT / "azure.yaml"]:
        code = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())  # comments may cite history
        found = [name for name in named.findall(code) if retired(name)]
        assert not found, (path.name, found)


def test_http_functions_stream_through_the_extension(template):
    """The FastAPI types (server-sent events) need the worker to index the app at start."""
    assert app_settings(template)["PYTHON_ENABLE_INIT_INDEXING"] == "1"


def test_caller_keys_come_from_key_vault_as_the_app_identity(template):
    assert "COMPLETIONS_CALLER_KEYS" not in app_settings(template)
    settings = app_settings(template, **FEATURES["caller keys"])
    assert settings["COMPLETIONS_CALLER_KEYS"] == \
        "@Microsoft.KeyVault(VaultName=kv-callers;SecretName=completions-caller-keys)"
    function = template.scope("main.bicep", **MAIN_REQUIRED, **FEATURES["caller keys"]).module("function")
    site = function.tree["resources"]["site"]["config"]["properties"]
    assert function.value(site["keyVaultReferenceIdentity"]) == Unresolved("identity.outputs.id")
    main = template.scope("main.bicep", **MAIN_REQUIRED, **FEATURES["caller keys"])
    assert main.condition("modules", "callerKeysAccess") is True
    assert template.scope("main.bicep", **MAIN_REQUIRED).condition("modules", "callerKeysAccess") is False
    access_call = main.tree["modules"]["callerKeysAccess"]["config"]["config"]  # (a conditional module)
    assert main.value(access_call["scope"]["function"]["parameters"]["resource_group_name"]) == "sec-rg"
    assert main.module("callerKeysAccess").value("vaultName") == "kv-callers"
    # and the app, given the resolved secret, checks keys itself: its routes are anonymous at the host
    from shared.callers import routes_are_anonymous
    assert routes_are_anonymous(environ_from(settings))


# -- roles ------------------------------------------------------------------------------------------

def role_assignments(template: Template):
    """(file, symbol, scope symbol, principal expression, role name, deployment condition) of each."""
    found = []
    for file, name, resource, body in template.resources():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        definition = body["properties"]["roleDefinitionId"]["function"]
        assert definition["type"] == "subscription_resource_id", (file, name)
        assert definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        path = accessor_path(definition["parameters"]["resource_name_1"])
        assert path and len(path) == 2, (file, name)
        variable = template.trees[file]["variables"][path[0]]["value"]["function"]
        assert variable == {"type": "load_json_content", "parameters": {
            "file_path": "roles.json", "json_path": None, "encoding": None}}, (file, name)
        principal = ".".join(accessor_path(body["properties"]["principalId"]))
        found.append((file, name, body["scope"], principal, path[1], resource["config"].get("condition")))
    return found


def test_each_assignment_names_its_principal_s_type(template):
    """A wrong principalType fails the assignment at deployment (or, for a user given as a
    service principal, leaves it unusable): the identity is a service principal, the developer
    whatever AZURE_PRINCIPAL_TYPE says."""
    kinds = set()
    for _, _name, resource, body in template.resources():
        if resource["type"] == "Microsoft.Authorization/roleAssignments":
            principal = ".".join(accessor_path(body["properties"]["principalId"]))
            kind = body["properties"]["principalType"]
            kinds.add((principal, kind if isinstance(kind, str) else ".".join(accessor_path(kind))))
    assert kinds == {("identityPrincipalId", "ServicePrincipal"), ("developerPrincipalId", "developerPrincipalType"),
                     ("deadLetterIdentity.properties.principalId", "ServicePrincipal")}  # the topic's own identity


def test_role_definition_ids_are_the_built_in_ones(template):
    roles = json.loads((INFRA / "modules" / "roles.json").read_text())
    assert roles == {name: BUILT_IN_ROLES[name] for name in roles}
    used = {role for *_, role, _ in role_assignments(template)}
    assert used <= set(roles), used - set(roles)
    assert "CognitiveServicesUser" not in roles  # the broader role the OpenAI samples drift to


def test_each_principal_gets_the_roles_it_needs(template):
    grants = {(file, scope, principal, role) for file, _, scope, principal, role, _ in role_assignments(template)}
    identity, developer = "identityPrincipalId", "developerPrincipalId"
    expected = {
        ("modules/openai-access.bicep", "account", identity, "CognitiveServicesOpenAIUser"),
        ("modules/roles.bicep", "storage", identity, "StorageBlobDataOwner"),
        ("modules/roles.bicep", "storage", identity, "StorageQueueDataContributor"),
        ("modules/roles.bicep", "applicationInsights", identity, "MonitoringMetricsPublisher"),
        ("modules/appconfig.bicep", "store", identity, "AppConfigurationDataReader"),
        ("modules/eventgrid.bicep", "deadLetterContainer", "deadLetterIdentity.properties.principalId",
         "StorageBlobDataContributor"),
        ("modules/keyvault-access.bicep", "vault", identity, "KeyVaultSecretsUser"),
    }
    # The developer gets the same data roles (writing App Configuration keys, publishing events).
    expected |= {(file, scope, developer, role) for file, scope, who, role in expected
                 if who == identity and file not in ("modules/appconfig.bicep", "modules/keyvault-access.bicep")}
    expected |= {("modules/appconfig.bicep", "store", developer, "AppConfigurationDataOwner"),
                 ("modules/eventgrid.bicep", "topic", developer, "EventGridDataSender")}
    assert grants == expected
    # Developer grants only when a principal id is given; the identity's always.
    for file, name, _, principal, _, condition in role_assignments(template):
        assert (condition is not None) == (principal == developer), (file, name)
    main = template.scope("main.bicep", **MAIN_REQUIRED, principalId="dev-oid", enableAppConfiguration=True,
                          enableEventGrid=True)
    for module in ("roles", "openAiAccess", "appConfig"):
        called = main.module(module)
        assert called.value("identityPrincipalId") == Unresolved("identity.outputs.principalId"), module
        assert called.value("developerPrincipalId") == "dev-oid", module
    assert main.module("eventGrid").value("developerPrincipalId") == "dev-oid"
    assert template.scope("main.bicep", **MAIN_REQUIRED).module("roles").value("developerPrincipalId") == ""


# -- the template's shape ---------------------------------------------------------------------------

def test_api_versions_are_cited(template):
    used = {(resource["type"], resource["api_version"]) for _, _, resource, _ in template.resources()}
    assert used <= set(CITED_API_VERSIONS), used - set(CITED_API_VERSIONS)


def test_every_module_is_local(template):
    for file, tree in template.trees.items():
        for name, module in tree.get("modules", {}).items():
            assert module["type"] == "local", (file, name)
            assert (INFRA / Path(file).parent / module["detail"]["path"]).exists(), (file, name)
    for path in INFRA.rglob("*.bicep"):
        assert not re.search(r"'(br|ts)[:/]", path.read_text()), path


def test_azd_wiring():
    azure_yaml = (ROOT / "azure.yaml").read_text()
    service = re.search(r"^services:\n  api:\n((?:    .*\n)+)", azure_yaml, re.MULTILINE)
    assert service, azure_yaml
    assert {line.strip() for line in service.group(1).splitlines()} == {
        "project: .", "language: python", "host: function"}
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"


def test_parameters_file_matches_main_bicep(template):
    main = template.trees["main.bicep"]
    assert main["globals"]["scope"]["value"] == "subscription"
    assert "Microsoft.Resources/resourceGroups" in {r["type"] for r in main["resources"].values()}
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(parameters) <= set(main["parameters"]), set(parameters) - set(main["parameters"])
    without_default = {name for name, p in main["parameters"].items() if p.get("default") is None}
    assert without_default <= set(parameters)
    # azd passes the file's ${NAME=default}, not main.bicep's default: the two must agree (the
    # README and tests read main.bicep's, e.g. perInstanceConcurrency 512)
    for name, parameter in parameters.items():
        found = re.fullmatch(r"\$\{[A-Z_]+=(.*)\}", parameter["value"])
        default = main["parameters"][name].get("default")
        if found and default is not None:
            text = json.dumps(default) if isinstance(default, bool) else str(default)
            assert found.group(1) == text, (name, found.group(1), default)


def test_app_configuration_can_be_purged_by_azd_down(template):
    store = template.trees["modules/appconfig.bicep"]["resources"]["store"]["config"]["properties"]
    assert store["enablePurgeProtection"] is False  # README: `azd down --purge` removes it all


def test_the_function_app_is_the_azd_service(template):
    function = template.scope("main.bicep", **MAIN_REQUIRED).module("function")
    site = function.tree["resources"]["site"]["config"]
    tags = function.value(site["tags"])
    assert tags["azd-service-name"] == "api" and tags["azd-env-name"] == "dev"
    assert site["kind"] == "functionapp,linux"
    assert function.value(site["properties"]["functionAppConfig"]["runtime"]) == {"name": "python", "version": "3.11"}
    outputs = template.trees["main.bicep"]["outputs"]
    assert {"AZURE_LOCATION", "AZURE_TENANT_ID", "AZURE_RESOURCE_GROUP", "SERVICE_API_NAME", "SERVICE_API_URI",
            "AZURE_FUNCTION_APP_NAME", "AZURE_OPENAI_ENDPOINT"} <= set(outputs)


# -- the postdeploy hook (Event Grid subscription) --------------------------------------------------

HOOK = INFRA / "hooks" / "postdeploy.py"
HOOK_ENV = {
    "AZURE_RESOURCE_GROUP": "rg-dev", "AZURE_SUBSCRIPTION_ID": "sub-1", "EVENT_GRID_TOPIC_NAME": "evgt-x",
    "AZURE_FUNCTION_APP_NAME": "func-x", "AZURE_STORAGE_ACCOUNT_NAME": "stx",
    "EVENT_GRID_DEAD_LETTER_CONTAINER": "eventgrid-deadletter", "EVENT_GRID_DEAD_LETTER_IDENTITY_ID": "/id/evgt",
    "POSTDEPLOY_RETRY_SECONDS": "0",
}


def fake_az(tmp_path: Path, fail_times: int = 0) -> Path:
    """An `az` on PATH that records its arguments and fails the first ``fail_times`` calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(f"""#!{sys.executable}
import json, sys
from pathlib import Path
log = Path({str(tmp_path / 'calls.jsonl')!r})
calls = log.read_text().splitlines() if log.exists() else []
with log.open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(1 if len(calls) < {fail_times} else 0)
""")
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_hook(tmp_path: Path, env: dict, fail_times: int = 0) -> tuple[subprocess.CompletedProcess, list]:
    path = f"{fake_az(tmp_path, fail_times)}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run([sys.executable, str(HOOK)], env={**os.environ, **env, "PATH": path},
                          capture_output=True, text=True, timeout=60)
    log = tmp_path / "calls.jsonl"
    return done, [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_hook_does_nothing_without_event_grid(tmp_path):
    done, calls = run_hook(tmp_path, {**HOOK_ENV, "EVENT_GRID_TOPIC_NAME": ""})
    assert done.returncode == 0 and calls == [], done.stdout + done.stderr


def test_hook_subscribes_the_event_grid_function(template, tmp_path):
    done, calls = run_hook(tmp_path, HOOK_ENV, fail_times=1)  # the first try, before indexing, fails
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(calls) == 2 and calls[0] == calls[1]
    args = calls[0]
    assert args[:4] == ["deployment", "group", "create", "--name"]
    assert args[args.index("--resource-group") + 1] == "rg-dev"
    assert args[args.index("--subscription") + 1] == "sub-1"
    template_file = Path(args[args.index("--template-file") + 1])
    assert template_file == INFRA / "modules" / "eventgrid-subscription.bicep"
    given = dict(arg.split("=", 1) for arg in args[args.index("--parameters") + 1:] if "=" in arg)
    # The function the app defines with event_grid_trigger; every parameter the template needs.
    source = (ROOT / "function_app.py").read_text()
    assert re.search(rf"@app\.event_grid_trigger\(.*\)\n(?:@.*\n)*(?:async )?def {given['functionName']}\(", source)
    subscription = template.trees["modules/eventgrid-subscription.bicep"]["parameters"]
    needed = {name for name, p in subscription.items() if p.get("default") is None}
    assert needed == set(given), needed ^ set(given)
    # ...each of which main.bicep outputs (azd puts outputs in the hook's environment).
    outputs = set(template.trees["main.bicep"]["outputs"])
    hook_env = {"topicName": "EVENT_GRID_TOPIC_NAME", "functionAppName": "AZURE_FUNCTION_APP_NAME",
                "storageAccountName": "AZURE_STORAGE_ACCOUNT_NAME",
                "deadLetterContainerName": "EVENT_GRID_DEAD_LETTER_CONTAINER",
                "deadLetterIdentityId": "EVENT_GRID_DEAD_LETTER_IDENTITY_ID"}
    assert {given[p] for p in hook_env} == {HOOK_ENV[e] for e in hook_env.values()}
    assert set(hook_env.values()) | {"AZURE_RESOURCE_GROUP"} <= outputs


def test_hook_gives_up_after_its_attempts(tmp_path):
    done, calls = run_hook(tmp_path, {**HOOK_ENV, "POSTDEPLOY_ATTEMPTS": "2"}, fail_times=5)
    assert done.returncode == 1 and len(calls) == 2
