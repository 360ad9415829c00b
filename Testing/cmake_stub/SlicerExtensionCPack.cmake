# Test double of Slicer's CMake/SlicerExtensionCPack.cmake.
#
# Keeps the real file's sanity checks and writes the extension description the way
# Slicer's slicerFunctionGenerateExtensionDescription does (same keywords, same
# normalisation of lists and newlines), to
# ${CMAKE_BINARY_DIR}/slicer_stub/<EXTENSION_NAME>.s4ext, with the metadata the
# extension left to defaults (UseSlicer.cmake here) and the scripted-modules folders.
# No package is made.

foreach(var EXTENSION_NAME Slicer_REVISION Slicer_OS Slicer_ARCHITECTURE)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "error: ${var} is either NOT defined or empty.")
  endif()
endforeach()
if(NOT "${EXTENSION_NAME}" STREQUAL "${PROJECT_NAME}")
  message(FATAL_ERROR "stub: EXTENSION_NAME [${EXTENSION_NAME}] differs from PROJECT_NAME"
    " [${PROJECT_NAME}]: the real file would silently skip packaging")
endif()
foreach(var EXTENSION_README_FILE EXTENSION_LICENSE_FILE)
  if(NOT EXISTS ${${var}})
    message(FATAL_ERROR "error: ${var} points to an inexistent file: ${${var}}")
  endif()
endforeach()

function(_slicer_stub_items_to_s4ext items separator output_var)
  string(REPLACE "\n" "" items "${items}")
  list(TRANSFORM items STRIP)
  string(REGEX REPLACE " +" " " items "${items}")
  string(STRIP "${items}" items)
  list(JOIN items "${separator}" items)
  set(${output_var} "${items}" PARENT_SCOPE)
endfunction()

_slicer_stub_items_to_s4ext("${EXTENSION_CONTRIBUTORS}" ", " _contributors)
_slicer_stub_items_to_s4ext("${EXTENSION_SCREENSHOTURLS}" " " _screenshoturls)
string(REPLACE "\n" "<br>" _description "${EXTENSION_DESCRIPTION}")
list(JOIN EXTENSION_DEPENDS " " _depends)
list(JOIN EXTENSION_RECOMMENDS " " _recommends)
list(JOIN EXTENSION_KEYWORDS " " _keywords)

file(WRITE "${CMAKE_BINARY_DIR}/slicer_stub/${EXTENSION_NAME}.s4ext"
"depends ${_depends}
recommends ${_recommends}
build_subdirectory ${EXTENSION_BUILD_SUBDIRECTORY}
homepage ${EXTENSION_HOMEPAGE}
contributors ${_contributors}
category ${EXTENSION_CATEGORY}
iconurl ${EXTENSION_ICONURL}
status ${EXTENSION_STATUS}
tier ${EXTENSION_TIER}
description ${_description}
screenshoturls ${_screenshoturls}
enabled ${EXTENSION_ENABLED}
dicom_support_rule ${EXTENSION_DICOM_SUPPORT_RULE}
keywords ${_keywords}
")

list(JOIN SLICER_STUB_DEFAULTED_METADATA " " _defaulted)
file(WRITE "${CMAKE_BINARY_DIR}/slicer_stub/layout.txt"
"defaulted_metadata ${_defaulted}
qtscriptedmodules_lib_dir ${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
install_qtscriptedmodules_lib_dir ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
license_file ${EXTENSION_LICENSE_FILE}
readme_file ${EXTENSION_README_FILE}
")
