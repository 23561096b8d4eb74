include(CMakePackageConfigHelpers)
install(DIRECTORY include/lowmem DESTINATION include)
install(EXPORT lowmemTargets NAMESPACE lowmem:: DESTINATION lib/cmake/lowmem)
configure_package_config_file(cmake/lowmemConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/lowmemConfig.cmake
  INSTALL_DESTINATION lib/cmake/lowmem)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/lowmemConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/lowmemConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/lowmemConfigVersion.cmake
  DESTINATION lib/cmake/lowmem)
