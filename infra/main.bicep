// azd entry point: `azd up` provisions this (subscription scope: it creates the resource group),
// then deploys the app. Every resource is declared in a local module under modules/, never a
// registry (br/public:) module, so that `make infra-check` can parse and scan all of it offline.
// pycep-parser (what checkov reads Bicep with) applies no operator precedence: it reads
// `!empty(a) ? b : c` as `!(empty(a) ? b : c)`. Every operation that is an operand of another is
// therefore parenthesized, so that Bicep, checkov and tests/infra/test_infra.py read the same thing.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; it names the resource group and seeds resource names.')
param environmentName string

@minLength(1)
@description('Region of the resource group and every resource (Flex Consumption must be offered there).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Developer (or CI) principal id, given the same data roles as the app so local runs against Azure work; empty for none.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal', 'Group'])
param principalType string = 'User'

@description('Resource group to create; default rg-<environmentName>.')
param resourceGroupName string = ''

// -- Azure OpenAI: an existing account, or a new one ------------------------------------------
@description('Name of an existing Azure OpenAI account to use; empty to create one.')
param openAiAccountName string = ''

@description('Resource group of the existing account; default: the one this template creates.')
param openAiResourceGroupName string = ''

@description('Region of a new account; default: location (gpt-5.4-mini is offered as GlobalStandard in every region that offers Azure OpenAI).')
param openAiLocation string = ''

// The default model is a current GA chat model (Azure retired the last completions model,
// gpt-35-turbo-instruct, on 2025-11-11); docs/deployment.md says how to pick another.
// tests/infra/test_infra.py fails if a retired model is named here.
@description('Model of a new deployment: a chat model Azure offers for new deployments.')
param openAiModelName string = 'gpt-5.4-mini'

@description('Model version of a new deployment.')
param openAiModelVersion string = '2026-03-17'

@description('Deployment the app calls (AZURE_OPENAI_DEPLOYMENT), new or existing; default: the model name.')
param openAiDeploymentName string = ''

@description('SKU of a new deployment (GlobalStandard: the gpt-5 family is offered as that SKU).')
param openAiDeploymentSkuName string = 'GlobalStandard'

@description('Capacity of a new deployment, in thousands of tokens per minute.')
@minValue(1)
param openAiDeploymentCapacity int = 30

// -- Callers ---------------------------------------------------------------------------------------
@description('Key Vault holding the callers\' key digests (COMPLETIONS_CALLER_KEYS, docs/sdk.md); empty: callers use function keys.')
param callerKeysVaultName string = ''

@description('Resource group of that vault; default: the one this template creates.')
param callerKeysVaultResourceGroupName string = ''

@description('Name of the secret holding the JSON object of caller name to SHA-256 digest (`make caller-key` prints an entry).')
param callerKeysSecretName string = 'completions-caller-keys'

// -- Flex Consumption ---------------------------------------------------------------------------
@description('Instance memory in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

// Bounds as validated by hashicorp/terraform-provider-azurerm (function_app_flex_consumption_resource.go:
// maximum_instance_count IntBetween(40, 1000), http_concurrency IntBetween(1, 1000)); Microsoft Learn's
// Flex Consumption plan page gives 1,000 as the highest maximum instance count.
@description('Most instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('HTTP invocations one instance runs at once: the completions the app is built to hold in flight per instance.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 512

@description('PYTHON_THREADPOOL_THREAD_COUNT; 0 leaves it unset (the app\'s functions are async: see modules/function.bicep).')
@minValue(0)
param pythonThreadpoolThreadCount int = 0

// -- Optional parts -----------------------------------------------------------------------------
@description('Create an Event Grid custom topic for the completion_from_event_grid function (the subscription is created after deploy).')
param enableEventGrid bool = false

@description('Create an App Configuration store and point the app at it (AZURE_APPCONFIG_ENDPOINT).')
param enableAppConfiguration bool = false

var tags = {
  'azd-env-name': environmentName
}
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var functionAppName = 'func-${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
var deadLetterContainerName = 'eventgrid-deadletter'
// The app's queues (shared/config/queues.py QueueNames): requests, the host's poison queue for them, results.
var requestQueueName = 'completion-requests'
var resultQueueName = 'completion-results'
var useExistingOpenAi = !empty(openAiAccountName)
var deploymentName = (!empty(openAiDeploymentName)) ? openAiDeploymentName : openAiModelName
var useCallerKeys = !empty(callerKeysVaultName)
var newOpenAiName = 'oai-${resourceToken}'

// API version as in Azure-Samples/functions-quickstart-python-http-azd (infra/main.bicep).
resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: (!empty(resourceGroupName)) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    queueNames: [
      requestQueueName
      '${requestQueueName}-poison'
      resultQueueName
    ]
    deadLetterContainerName: enableEventGrid ? deadLetterContainerName : ''
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityPrincipalId: identity.outputs.principalId
    developerPrincipalId: principalId
    developerPrincipalType: principalType
  }
}

module openAi 'modules/openai.bicep' = if (!useExistingOpenAi) {
  name: 'openai'
  scope: rg
  params: {
    name: newOpenAiName
    location: (!empty(openAiLocation)) ? openAiLocation : location
    tags: tags
    deploymentName: deploymentName
    modelName: openAiModelName
    modelVersion: openAiModelVersion
    deploymentSkuName: openAiDeploymentSkuName
    deploymentCapacity: openAiDeploymentCapacity
  }
}

module openAiAccess 'modules/openai-access.bicep' = {
  name: 'openai-access'
  scope: resourceGroup((useExistingOpenAi && (!empty(openAiResourceGroupName))) ? openAiResourceGroupName : rg.name)
  params: {
    accountName: useExistingOpenAi ? openAiAccountName : openAi.outputs.name
    identityPrincipalId: identity.outputs.principalId
    developerPrincipalId: principalId
    developerPrincipalType: principalType
  }
}

module callerKeysAccess 'modules/keyvault-access.bicep' = if (useCallerKeys) {
  name: 'caller-keys-access'
  scope: resourceGroup((!empty(callerKeysVaultResourceGroupName)) ? callerKeysVaultResourceGroupName : rg.name)
  params: {
    vaultName: callerKeysVaultName
    identityPrincipalId: identity.outputs.principalId
  }
}

module appConfig 'modules/appconfig.bicep' = if (enableAppConfiguration) {
  name: 'appconfig'
  scope: rg
  params: {
    name: 'appcs-${resourceToken}'
    location: location
    tags: tags
    identityPrincipalId: identity.outputs.principalId
    developerPrincipalId: principalId
    developerPrincipalType: principalType
  }
}

module eventGrid 'modules/eventgrid.bicep' = if (enableEventGrid) {
  name: 'eventgrid'
  scope: rg
  params: {
    topicName: 'evgt-${resourceToken}'
    identityName: 'id-evgt-${resourceToken}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    deadLetterContainerName: deadLetterContainerName
    developerPrincipalId: principalId
    developerPrincipalType: principalType
  }
}

module function 'modules/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    pythonThreadpoolThreadCount: pythonThreadpoolThreadCount
    openAiEndpoint: openAiAccess.outputs.endpoint
    openAiDeploymentName: deploymentName
    requestQueueName: requestQueueName
    resultQueueName: resultQueueName
    appConfigEndpoint: enableAppConfiguration ? appConfig.outputs.endpoint : ''
    callerKeysVaultName: callerKeysVaultName
    callerKeysSecretName: callerKeysSecretName
  }
  // The app starts calling storage and Azure OpenAI as soon as it exists: grant first.
  dependsOn: [
    roles
    callerKeysAccess
  ]
}

// azd reads these into the environment (.azure/<env>/.env); the postdeploy hook uses some.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = function.outputs.name
output SERVICE_API_NAME string = function.outputs.name
output SERVICE_API_URI string = function.outputs.uri
output AZURE_FUNCTION_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_OPENAI_ENDPOINT string = openAiAccess.outputs.endpoint
output AZURE_OPENAI_DEPLOYMENT string = deploymentName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_QUEUE_ENDPOINT string = storage.outputs.queueEndpoint
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString
output AZURE_APPCONFIG_ENDPOINT string = enableAppConfiguration ? appConfig.outputs.endpoint : ''
output EVENT_GRID_TOPIC_NAME string = enableEventGrid ? eventGrid.outputs.topicName : ''
output EVENT_GRID_TOPIC_ENDPOINT string = enableEventGrid ? eventGrid.outputs.endpoint : ''
output EVENT_GRID_DEAD_LETTER_IDENTITY_ID string = enableEventGrid ? eventGrid.outputs.deadLetterIdentityId : ''
output EVENT_GRID_DEAD_LETTER_CONTAINER string = enableEventGrid ? deadLetterContainerName : ''
