# Test double of Slicer's SlicerExtensionGenerateConfig.cmake: the real one writes
# <Extension>Config.cmake for extensions that build on this one; nothing to check here.
