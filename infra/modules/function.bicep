// The Flex Consumption plan and the function app, running as the user-assigned identity,
// with every setting the app reads at run time (tests/infra/test_infra.py checks them against
// shared/config/settings.py).
param name string
param planName string
param location string
param tags object = {}
@description('azd deploys the service whose name is in this tag (azure.yaml: services.api).')
param serviceName string = 'api'

param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string

@allowed([512, 2048, 4096])
param instanceMemoryMB int
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int
@minValue(0)
param pythonThreadpoolThreadCount int = 0

param openAiEndpoint string
param openAiDeploymentName string
param requestQueueName string
param resultQueueName string
@description('App Configuration endpoint; empty when the app takes its settings from app settings only.')
param appConfigEndpoint string = ''
@description('Key Vault holding COMPLETIONS_CALLER_KEYS; empty: the HTTP routes keep function keys.')
param callerKeysVaultName string = ''
param callerKeysSecretName string = 'completions-caller-keys'

// API versions as in Azure-Samples/functions-quickstart-python-http-azd (infra/core, commit 3dc075a);
// functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency is in 2023-12-01.
resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption keeps two always-ready instances per function group, billed around the clock; a cost choice this template leaves off
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

// Identity-based host storage: the Functions host uses AzureWebJobsStorage__* with the
// identity's client id, never a connection string (the account has shared keys off).
var storageSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
}

// Application Insights has local auth off: the SDK authenticates as the identity.
var telemetrySettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identityClientId}'
}

var appSettings = {
  AZURE_OPENAI_ENDPOINT: openAiEndpoint
  AZURE_OPENAI_DEPLOYMENT: openAiDeploymentName
  AZURE_OPENAI_AUTH: 'managed_identity'
  // Which identity azure-identity asks IMDS for: the app has only this user-assigned one.
  AZURE_CLIENT_ID: identityClientId
  // One instance of the HTTP group runs at most httpPerInstanceConcurrency invocations at once,
  // so that is also how many upstream calls the app lets it have in flight.
  AZURE_OPENAI_MAX_CONCURRENCY: string(httpPerInstanceConcurrency)
  COMPLETIONS_REQUEST_QUEUE: requestQueueName
  COMPLETIONS_RESULT_QUEUE: resultQueueName
  // The HTTP functions use the Functions streaming extension (FastAPI types, server-sent
  // events): the worker serves them so only when it indexes the app at start (host 4.34.1+).
  PYTHON_ENABLE_INIT_INDEXING: '1'
}

// Caller keys (docs/sdk.md): a Key Vault reference, resolved by the platform as the app's identity
// (keyVaultReferenceIdentity below); with it the HTTP routes are anonymous at the host and the app
// checks each caller's key itself.
var callerKeySettings = (!empty(callerKeysVaultName)) ? {
  COMPLETIONS_CALLER_KEYS: '@Microsoft.KeyVault(VaultName=${callerKeysVaultName};SecretName=${callerKeysSecretName})'
} : {}

// PYTHON_THREADPOOL_THREAD_COUNT sizes the worker's thread pool, which only synchronous
// (def) functions run on. The app's functions are async def: they run on the worker's event
// loop, so the pool does not bound their concurrency and the setting is left to the
// platform default. Set pythonThreadpoolThreadCount > 0 only to deploy a synchronous build.
var threadpoolSettings = (pythonThreadpoolThreadCount > 0) ? {
  PYTHON_THREADPOOL_THREAD_COUNT: string(pythonThreadpoolThreadCount)
} : {}

// Issue 13: the app bootstraps from App Configuration (key prefix 'completions:') when set.
var appConfigSettings = (!empty(appConfigEndpoint)) ? {
  AZURE_APPCONFIG_ENDPOINT: appConfigEndpoint
} : {}

var settings = union(storageSettings, telemetrySettings, appSettings, threadpoolSettings, appConfigSettings,
  callerKeySettings)

resource site 'Microsoft.Web/sites@2023-12-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  // checkov:skip=CKV_AZURE_222: the completions API is public by design; POST /api/completions requires a function key
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys, not client certificates
  // checkov:skip=CKV_AZURE_212: siteConfig.numberOfWorkers is not a Flex Consumption setting; the scale controller adds instances (maximumInstanceCount)
  // checkov:skip=CKV_AZURE_213: App Service health check routes among a fixed set of instances; Flex Consumption instances come and go with load. GET /api/health is there for external probes
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(settings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output id string = site.id
output name string = site.name
output uri string = 'https://${site.properties.defaultHostName}'
